"""Meta-format WhatsApp bodies as Meta would send them: for the fake Graph API, the simulated user,
the demo and the tests. Not product code: the product only reads this format (``wire``).
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Final

from parley.channels.base import JSONDict
from parley.channels.whatsapp.wire import MESSAGES_FIELD, WEBHOOK_OBJECT

ERROR_CODES_HREF: Final = (
    "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
)

# Meta's own documentation examples: realistic but not anybody's real account.
EXAMPLE_WABA_ID: Final = "102290129340398"
EXAMPLE_DISPLAY_PHONE_NUMBER: Final = "15550783881"


def new_wamid(phone: str) -> str:
    """A unique id shaped like Meta's (``wamid.HBgL`` + base64 of the number and a random tail)."""
    tail = secrets.token_hex(10).upper()
    encoded = base64.b64encode(f"{phone}\x15\x02\x00\x12\x18\x14{tail}\x00".encode())
    return "wamid.HBgL" + encoded.decode()


def build_text_message_payload(
    *,
    phone_number_id: str,
    from_phone: str,
    text: str,
    contact_name: str | None = "Demo User",
    message_id: str | None = None,
    timestamp: int | None = None,
    context_message_id: str | None = None,
    display_phone_number: str = EXAMPLE_DISPLAY_PHONE_NUMBER,
    waba_id: str = EXAMPLE_WABA_ID,
) -> JSONDict:
    """A user's text message exactly as Meta delivers it (optionally as a reply to ours)."""
    message = _message_head(from_phone, message_id, timestamp, "text")
    message["text"] = {"body": text}
    if context_message_id is not None:
        message["context"] = {"from": display_phone_number, "id": context_message_id}
    return _inbound_envelope(
        message, phone_number_id, from_phone, contact_name, display_phone_number, waba_id
    )


def build_button_reply_payload(
    *,
    phone_number_id: str,
    from_phone: str,
    reply_id: str,
    title: str,
    context_message_id: str,
    contact_name: str | None = "Demo User",
    message_id: str | None = None,
    timestamp: int | None = None,
    display_phone_number: str = EXAMPLE_DISPLAY_PHONE_NUMBER,
    waba_id: str = EXAMPLE_WABA_ID,
) -> JSONDict:
    """A tap on one of our reply buttons exactly as Meta delivers it."""
    message = _message_head(from_phone, message_id, timestamp, "interactive")
    message["context"] = {"from": display_phone_number, "id": context_message_id}
    message["interactive"] = {
        "type": "button_reply",
        "button_reply": {"id": reply_id, "title": title},
    }
    return _inbound_envelope(
        message, phone_number_id, from_phone, contact_name, display_phone_number, waba_id
    )


def build_status_payload(
    *,
    phone_number_id: str,
    message_id: str,
    status: str,
    recipient: str,
    client_ref: str | None = None,
    timestamp: int | None = None,
    errors: list[JSONDict] | None = None,
    conversation_id: str | None = None,
    display_phone_number: str = EXAMPLE_DISPLAY_PHONE_NUMBER,
    waba_id: str = EXAMPLE_WABA_ID,
) -> JSONDict:
    """A status callback as Meta sends it; billing details appear only where Meta puts them."""
    entry: JSONDict = {
        "id": message_id,
        "status": status,
        "timestamp": _unix(timestamp),
        "recipient_id": recipient,
    }
    if client_ref is not None:
        entry["biz_opaque_callback_data"] = client_ref
    if status in ("sent", "delivered"):
        entry.update(_billing(status, conversation_id, timestamp))
    if errors:
        entry["errors"] = errors
    value = _value_head(phone_number_id, display_phone_number)
    value["statuses"] = [entry]
    return _envelope(value, waba_id)


def status_error(code: int, title: str, details: str) -> JSONDict:
    """One element of a failed status's ``errors``, in Meta's shape."""
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details},
        "href": ERROR_CODES_HREF,
    }


def _message_head(
    from_phone: str, message_id: str | None, timestamp: int | None, kind: str
) -> JSONDict:
    return {
        "from": from_phone,
        "id": message_id or new_wamid(from_phone),
        "timestamp": _unix(timestamp),
        "type": kind,
    }


def _billing(status: str, conversation_id: str | None, timestamp: int | None) -> JSONDict:
    conversation: JSONDict = {"id": conversation_id or secrets.token_hex(16)}
    if status == "sent":
        expires = (timestamp if timestamp is not None else int(time.time())) + 24 * 3600
        conversation["expiration_timestamp"] = str(expires)
    conversation["origin"] = {"type": "service"}
    pricing = {"billable": True, "pricing_model": "CBP", "category": "service"}
    return {"conversation": conversation, "pricing": pricing}


def _inbound_envelope(
    message: JSONDict,
    phone_number_id: str,
    from_phone: str,
    contact_name: str | None,
    display_phone_number: str,
    waba_id: str,
) -> JSONDict:
    value = _value_head(phone_number_id, display_phone_number)
    if contact_name is not None:
        value["contacts"] = [{"profile": {"name": contact_name}, "wa_id": from_phone}]
    value["messages"] = [message]
    return _envelope(value, waba_id)


def _value_head(phone_number_id: str, display_phone_number: str) -> JSONDict:
    return {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": display_phone_number,
            "phone_number_id": phone_number_id,
        },
    }


def _envelope(value: JSONDict, waba_id: str) -> JSONDict:
    return {
        "object": WEBHOOK_OBJECT,
        "entry": [{"id": waba_id, "changes": [{"value": value, "field": MESSAGES_FIELD}]}],
    }


def _unix(timestamp: int | None) -> str:
    return str(timestamp if timestamp is not None else int(time.time()))
