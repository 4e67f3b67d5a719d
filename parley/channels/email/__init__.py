"""Email over SMTP (out) and an inbound-email provider's signed webhook (in): ``client``
(composing and sending), ``wire`` (webhook signatures, replies, bounces), ``channel``."""
