"""Which WhatsApp number an identity's messages go out from and its leads' replies come back
to, read from its row: a WhatsApp identity's own settings (``phone_number_id``, else its
address), any other identity's ``whatsapp`` mapping (a LinkedIn seat's number for
``whatsapp_template`` steps). The inbox routes a message by the number it arrived on; the step
executor and the dispatcher send from it. ``parley.db.queries.identities`` says the same in SQL
(``whatsapp_number_claimers``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from parley.channels.base import SenderIdentity
from parley.db.models import Identity

WHATSAPP: Final = "whatsapp"


def whatsapp_settings(identity: Identity) -> dict[str, Any]:
    """An identity's WhatsApp settings: a WhatsApp identity's own (top-level) ones, another
    identity's ``whatsapp`` mapping (a LinkedIn seat's number for ``whatsapp_template`` steps,
    parallel to its ``email`` mailbox)."""
    return whatsapp_settings_in(identity.channel, identity.settings or {})


def whatsapp_settings_in(channel: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    if channel == WHATSAPP:
        return {k: v for k, v in settings.items() if not isinstance(v, Mapping)}
    nested = settings.get(WHATSAPP)
    return dict(nested) if isinstance(nested, Mapping) else {}


def whatsapp_number(identity: Identity) -> str | None:
    """The phone number id the identity's WhatsApp templates go out from and its leads' replies
    come back to: ``phone_number_id`` in its WhatsApp settings; for a WhatsApp identity without
    one, its address (the webhook records numbers by their phone number id). None: the
    identity has no number of its own and sends from ``PARLEY_WHATSAPP_PHONE_NUMBER_ID``."""
    return whatsapp_number_in(identity.channel, identity.address, identity.settings or {})


def whatsapp_number_in(channel: str, address: str, settings: Mapping[str, Any]) -> str | None:
    number = whatsapp_settings_in(channel, settings).get("phone_number_id")
    if number:
        return str(number)
    return address if channel == WHATSAPP else None


def whatsapp_sender(identity: Identity) -> SenderIdentity:
    """The account an identity's WhatsApp templates go out from (see ``whatsapp_number``)."""
    settings = whatsapp_settings(identity)
    number = whatsapp_number(identity)
    if number is None:
        settings.pop("access_token", None)  # a token goes with its own number only
        return SenderIdentity(WHATSAPP, "", settings)
    return SenderIdentity(WHATSAPP, number, {**settings, "phone_number_id": number})


def starts_conversations(identity: Identity) -> bool:
    """Whether a stranger's message on this identity's number starts a conversation on the
    default campaign (``start_conversations: true`` in its WhatsApp settings)."""
    return whatsapp_settings(identity).get("start_conversations") is True
