"""LinkedIn through an outreach gateway: ``client`` (the gateway's HTTP contract, actions out),
``wire`` (the gateway's signed webhooks in), ``channel`` (both as a Parley channel)."""
