"""The channels this Parley knows, by name: their capabilities (for the campaign validator) and
how to build them from settings (one instance per channel in each process)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from parley.channels.base import Capabilities, Channel, OutreachChannel
from parley.channels.email import client as email_client
from parley.channels.email.channel import EmailChannel
from parley.channels.linkedin import client as linkedin_client
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.channels.whatsapp import client as whatsapp_client
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.errors import NotFound
from parley.settings import Settings

CAPABILITIES: Final[Mapping[str, Capabilities]] = {
    "whatsapp": whatsapp_client.CAPABILITIES,
    "email": email_client.CAPABILITIES,
    "linkedin": linkedin_client.CAPABILITIES,
}
CHANNEL_NAMES: Final = frozenset(CAPABILITIES)


def capabilities_of(channel: str) -> Capabilities:
    try:
        return CAPABILITIES[channel]
    except KeyError:
        known = ", ".join(sorted(CAPABILITIES))
        raise NotFound(f"unknown channel {channel!r}; Parley knows {known}") from None


def whatsapp_config(settings: Settings) -> WhatsAppConfig:
    return WhatsAppConfig(
        api_url=settings.whatsapp_api_url,
        access_token=settings.whatsapp_access_token.get_secret_value(),
        phone_number_id=settings.whatsapp_phone_number_id,
        app_secret=settings.whatsapp_app_secret.get_secret_value(),
        verify_token=settings.whatsapp_verify_token.get_secret_value(),
        timeout_seconds=settings.whatsapp_timeout_seconds,
    )


def build_channels(settings: Settings) -> dict[str, Channel]:
    """One channel object per provider; senders create their HTTP clients on first use."""
    return {"whatsapp": WhatsAppChannel(whatsapp_config(settings))}


def build_outreach(settings: Settings) -> dict[str, OutreachChannel]:
    """The providers identities' dispatchers perform actions with: email over each mailbox's
    own SMTP server, LinkedIn through the gateway its seat (or these settings) names."""
    config = LinkedInConfig(  # defaults; a seat's own settings (gateway_url, api_key) win
        gateway_url=settings.linkedin_gateway_url,
        api_key=settings.linkedin_api_key.get_secret_value() or None,
        webhook_secret=settings.linkedin_webhook_secret.get_secret_value(),
    )
    whatsapp = WhatsAppChannel(whatsapp_config(settings))
    return {"email": EmailChannel(), "linkedin": LinkedInChannel(config), "whatsapp": whatsapp}
