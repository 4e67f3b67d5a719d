"""One router per provider (``whatsapp``) plus the operators' REST API (``api``)."""
