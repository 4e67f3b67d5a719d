"""WhatsApp through Meta's Cloud API: ``client`` (sending), ``wire`` (webhooks), ``channel``."""
