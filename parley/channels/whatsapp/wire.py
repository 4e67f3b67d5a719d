"""Meta's WhatsApp webhooks: proving a POST came from Meta, and reading it into neutral events.

Pure functions over bytes and dicts, so the web layer, the loopback fake and the tests share one
reading of the wire format and no web framework leaks into the core. Writing the format (the
bodies Meta would send) is test tooling and lives in ``devkit.fakes.whatsapp_payloads``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from parley.channels.base import (
    InboundBatch,
    InboundMessage,
    InboundRole,
    JSONDict,
    StatusUpdate,
)
from parley.errors import ConfigurationError, InvalidSignature, MalformedPayload

CHANNEL: Final = "whatsapp"
SIGNATURE_HEADER: Final = "X-Hub-Signature-256"
WEBHOOK_OBJECT: Final = "whatsapp_business_account"
MESSAGES_FIELD: Final = "messages"
MEDIA_TYPES: Final = frozenset({"image", "video", "document", "audio", "sticker"})
# What a person can answer a question with; reactions are kept in the transcript only.
ANSWER_TYPES: Final = frozenset({"text", "interactive", "button", "location", "contacts"})
TRANSCRIPT_TYPES: Final = frozenset({"reaction"})


def role_of(message_type: str) -> InboundRole:
    if message_type in ANSWER_TYPES or message_type in MEDIA_TYPES:
        return InboundRole.ANSWER
    if message_type in TRANSCRIPT_TYPES:
        return InboundRole.TRANSCRIPT
    return InboundRole.UNSUPPORTED


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


def parse_webhook(raw_body: bytes) -> InboundBatch:
    """Read a whole POST up front so a bad part refuses the body before anything is stored."""
    batch = InboundBatch()
    for entry in _entries(_load_document(raw_body)):
        for change in _changes(entry):
            if change.get("field") == MESSAGES_FIELD:
                _read_messages_value(_value_of(change), batch)
            else:
                batch.ignored.append(
                    {
                        "channel": CHANNEL,
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
    except RecursionError as exc:  # Meta never nests deeply; a hostile body must not be a 500
        raise MalformedPayload("webhook body is nested too deeply") from exc
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


def _read_messages_value(value: JSONDict, batch: InboundBatch) -> None:
    phone_number_id = _phone_number_id(value)
    names = _contact_names(_optional_list(value, "contacts"))
    for message in _optional_list(value, "messages"):
        batch.messages.append(_inbound_message(message, phone_number_id, names))
    for status in _optional_list(value, "statuses"):
        batch.statuses.append(_status_update(status, phone_number_id))
    for error in _optional_list(value, "errors"):
        batch.ignored.append(
            {
                "channel": CHANNEL,
                "field": MESSAGES_FIELD,
                "reason": "provider reported an error",
                "error": error,
            }
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
        channel=CHANNEL,
        provider_message_id=_required_str(message, "id", "message"),
        identity_address=phone_number_id,
        contact_address=sender,
        contact_name=names.get(sender) or _only_name(names),
        type=kind,
        role=role_of(kind),
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
        channel=CHANNEL,
        provider_message_id=_required_str(status, "id", "status"),
        identity_address=phone_number_id,
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
