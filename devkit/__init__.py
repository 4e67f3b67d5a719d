"""Dev tooling, not product: loopback provider fakes (``fakes``) and the local stack (``stack``)."""
