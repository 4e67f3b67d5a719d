"""Meta's WhatsApp webhooks: proving a POST came from Meta, and reading it into typed events.

Pure functions over bytes and dicts, so the web layer, the loopback fake and the tests share one
reading (and one writing) of the wire format and no web framework leaks into the core.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

from parley.errors import ConfigurationError, InvalidSignature, MalformedPayload

JSONDict = dict[str, Any]

SIGNATURE_HEADER: Final = "X-Hub-Signature-256"
WEBHOOK_OBJECT: Final = "whatsapp_business_account"
MESSAGES_FIELD: Final = "messages"
MEDIA_TYPES: Final = frozenset({"image", "video", "document", "audio", "sticker"})
ERROR_CODES_HREF: Final = (
    "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
)

# Meta's own documentation examples: realistic but not anybody's real account.
EXAMPLE_WABA_ID: Final = "102290129340398"
EXAMPLE_DISPLAY_PHONE_NUMBER: Final = "15550783881"

StatusName = Literal["sent", "delivered", "read", "failed"] | str


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message a user sent; ``text`` is what a chatbot should treat as the user's answer."""

    provider_message_id: str
    phone_number_id: str
    from_phone: str
    contact_name: str | None
    type: str
    text: str | None
    reply_id: str | None
    context_message_id: str | None
    timestamp: datetime
    raw: JSONDict = field(hash=False)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Fate of a message we sent; ``client_ref`` lets an uncertain send be reconciled."""

    provider_message_id: str
    phone_number_id: str
    status: StatusName
    recipient: str | None
    timestamp: datetime
    client_ref: str | None
    errors: list[JSONDict] = field(default_factory=list, hash=False)


@dataclass(frozen=True, slots=True)
class WebhookBatch:
    """Everything one POST carried; ``ignored`` explains each part that was skipped on purpose."""

    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    ignored: list[JSONDict] = field(default_factory=list)


# --- signatures -------------------------------------------------------------------------------


def sign(raw_body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta would send, so fakes and tests speak like Meta."""
    return "sha256=" + _hmac_hex(raw_body, app_secret)


def verify_signature(raw_body: bytes, header_value: str | None, app_secret: str) -> None:
    """Refuse any body not signed with our app secret: the webhook URL itself is public."""
    if not header_value:
        raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
    scheme, separator, digest = header_value.strip().partition("=")
    if scheme != "sha256" or not separator or not _is_sha256_hex(digest):
        raise InvalidSignature(f"malformed {SIGNATURE_HEADER} header; expected sha256=<64 hex>")
    if not hmac.compare_digest(_hmac_hex(raw_body, app_secret), digest.lower()):
        raise InvalidSignature(f"{SIGNATURE_HEADER} does not match the body")


def _hmac_hex(raw_body: bytes, app_secret: str) -> str:
    if not app_secret:
        # An empty key would make every forged body "valid".
        raise ConfigurationError("the WhatsApp app secret is empty")
    return hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()


def _is_sha256_hex(digest: str) -> bool:
    return len(digest) == 64 and all(char in string.hexdigits for char in digest)


# --- parsing ----------------------------------------------------------------------------------


def parse_webhook(raw_body: bytes) -> WebhookBatch:
    """Read a whole POST up front so a bad part refuses the body before anything is stored."""
    batch = WebhookBatch()
    for entry in _entries(_load_document(raw_body)):
        for change in _changes(entry):
            if change.get("field") == MESSAGES_FIELD:
                _read_messages_value(_value_of(change), batch)
            else:
                batch.ignored.append(
                    {
                        "entry_id": entry.get("id"),
                        "field": change.get("field"),
                        "reason": f"only the {MESSAGES_FIELD!r} field is handled",
                    }
                )
    return batch


def _load_document(raw_body: bytes) -> JSONDict:
    try:
        document = json.loads(raw_body)
    except ValueError as exc:
        raise MalformedPayload(f"webhook body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedPayload(f"webhook body is a JSON {type(document).__name__}, not an object")
    if document.get("object") != WEBHOOK_OBJECT:
        raise MalformedPayload(
            f"webhook object is {document.get('object')!r}, expected {WEBHOOK_OBJECT!r}"
        )
    return document


def _entries(document: JSONDict) -> list[JSONDict]:
    return _list_of_objects(document.get("entry"), "entry")


def _changes(entry: JSONDict) -> list[JSONDict]:
    return _list_of_objects(entry.get("changes"), "entry[].changes")


def _value_of(change: JSONDict) -> JSONDict:
    value = change.get("value")
    if not isinstance(value, dict):
        raise MalformedPayload("a 'messages' change has no 'value' object")
    return value


def _list_of_objects(value: Any, where: str) -> list[JSONDict]:
    if not isinstance(value, list):
        raise MalformedPayload(f"{where} is not a list")
    if not all(isinstance(item, dict) for item in value):
        raise MalformedPayload(f"{where} holds something that is not an object")
    return value


def _optional_list(value: JSONDict, key: str) -> list[JSONDict]:
    if key not in value:
        return []
    return _list_of_objects(value[key], f"value.{key}")


def _read_messages_value(value: JSONDict, batch: WebhookBatch) -> None:
    phone_number_id = _phone_number_id(value)
    names = _contact_names(_optional_list(value, "contacts"))
    for message in _optional_list(value, "messages"):
        batch.messages.append(_inbound_message(message, phone_number_id, names))
    for status in _optional_list(value, "statuses"):
        batch.statuses.append(_status_update(status, phone_number_id))
    for error in _optional_list(value, "errors"):
        batch.ignored.append(
            {"field": MESSAGES_FIELD, "reason": "provider reported an error", "error": error}
        )


def _phone_number_id(value: JSONDict) -> str:
    metadata = value.get("metadata")
    phone_number_id = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    if not isinstance(phone_number_id, str) or not phone_number_id:
        raise MalformedPayload("value.metadata.phone_number_id is missing")
    return phone_number_id


def _contact_names(contacts: list[JSONDict]) -> dict[str, str]:
    names: dict[str, str] = {}
    for contact in contacts:
        name = _text_at(contact, "profile", "name")
        wa_id = contact.get("wa_id")
        if isinstance(wa_id, str) and name is not None:
            names[wa_id] = name
    return names


def _inbound_message(
    message: JSONDict, phone_number_id: str, names: dict[str, str]
) -> InboundMessage:
    sender = _required_str(message, "from", "message")
    kind = message.get("type")
    kind = kind if isinstance(kind, str) else "unknown"
    content = _CONTENT_READERS.get(kind, _no_content)(message)
    return InboundMessage(
        provider_message_id=_required_str(message, "id", "message"),
        phone_number_id=phone_number_id,
        from_phone=sender,
        contact_name=names.get(sender) or _only_name(names),
        type=kind,
        text=content.text,
        reply_id=content.reply_id,
        context_message_id=content.context_message_id or _text_at(message, "context", "id"),
        timestamp=_timestamp(message.get("timestamp"), "message"),
        raw=message,
    )


def _only_name(names: dict[str, str]) -> str | None:
    # wa_id can be normalised differently from `from` (e.g. Brazil's ninth digit).
    return next(iter(names.values())) if len(names) == 1 else None


def _status_update(status: JSONDict, phone_number_id: str) -> StatusUpdate:
    client_ref = status.get("biz_opaque_callback_data")
    recipient = status.get("recipient_id")
    return StatusUpdate(
        provider_message_id=_required_str(status, "id", "status"),
        phone_number_id=phone_number_id,
        status=_required_str(status, "status", "status"),
        recipient=recipient if isinstance(recipient, str) else None,
        timestamp=_timestamp(status.get("timestamp"), "status"),
        client_ref=client_ref if isinstance(client_ref, str) else None,
        errors=_optional_list(status, "errors"),
    )


def _required_str(item: JSONDict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"a {where} has no {key!r}")
    return value


def _timestamp(value: Any, where: str) -> datetime:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise MalformedPayload(f"a {where} has an invalid timestamp {value!r}") from exc


def _text_at(item: JSONDict, *path: str) -> str | None:
    """A string nested under ``path``, or None when any step is missing or of another type."""
    current: Any = item
    for key in path:
        current = current.get(key) if isinstance(current, dict) else None
    return current if isinstance(current, str) else None


# --- what a chatbot reads as the answer, per message type -------------------------------------


class _Content(NamedTuple):
    text: str | None
    reply_id: str | None = None
    context_message_id: str | None = None


def _no_content(message: JSONDict) -> _Content:
    return _Content(None)


def _text_content(message: JSONDict) -> _Content:
    return _Content(_text_at(message, "text", "body"))


def _interactive_content(message: JSONDict) -> _Content:
    reply_kind = _text_at(message, "interactive", "type")
    if reply_kind not in ("button_reply", "list_reply"):
        return _Content(None)
    return _Content(
        _text_at(message, "interactive", reply_kind, "title"),
        _text_at(message, "interactive", reply_kind, "id"),
    )


def _button_content(message: JSONDict) -> _Content:
    return _Content(_text_at(message, "button", "text"), _text_at(message, "button", "payload"))


def _media_content(message: JSONDict) -> _Content:
    return _Content(_text_at(message, str(message["type"]), "caption"))


def _location_content(message: JSONDict) -> _Content:
    location = message.get("location")
    if not isinstance(location, dict) or not {"latitude", "longitude"} <= location.keys():
        return _Content(None)
    text = f"{location['latitude']},{location['longitude']}"
    name = _text_at(location, "name")
    return _Content(f"{text} ({name})" if name else text)


def _contacts_content(message: JSONDict) -> _Content:
    contacts = message.get("contacts")
    if not isinstance(contacts, list) or not contacts or not isinstance(contacts[0], dict):
        return _Content(None)
    return _Content(_text_at(contacts[0], "name", "formatted_name"))


def _reaction_content(message: JSONDict) -> _Content:
    # An empty emoji means the user removed their reaction.
    emoji = _text_at(message, "reaction", "emoji") or None
    return _Content(emoji, context_message_id=_text_at(message, "reaction", "message_id"))


_CONTENT_READERS: Final[dict[str, Callable[[JSONDict], _Content]]] = {
    "text": _text_content,
    "interactive": _interactive_content,
    "button": _button_content,
    "location": _location_content,
    "contacts": _contacts_content,
    "reaction": _reaction_content,
    **dict.fromkeys(MEDIA_TYPES, _media_content),
}


# --- building Meta-format bodies (for the fake, the tests and the demo) -----------------------


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
    status: StatusName,
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
