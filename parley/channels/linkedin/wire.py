"""The LinkedIn gateway's webhooks: proving a POST came from the gateway, and reading it.

Each POST carries one event::

    {"event": "message.received" | "message.delivered" | "invitation.accepted"
              | "account.session_expired",
     "id": "<event id>", "account_id": "<seat>", "timestamp": <unix>, "data": {...}}

signed in ``X-Gateway-Signature: t=<unix>,v1=<hex hmac-sha256 of "{t}.{raw body}">`` with the
webhook secret. ``data`` per event:

* ``message.received``: ``message_id``, ``from`` (the sender's profile id), ``text``, and
  optionally ``from_name``, ``chat_id``, ``reply_to`` (the id of our message it answers);
* ``message.delivered``: ``message_id`` (the id the gateway returned for our send), ``to``,
  ``client_ref`` (our ``Idempotency-Key``, echoed);
* ``invitation.accepted``: ``profile`` (who accepted), optionally ``invitation_id`` and
  ``client_ref`` (the key of our invitation);
* ``account.session_expired``: optionally ``reason``.

``parse_webhook`` gives the inbox its neutral ``InboundBatch``; the two events that are not
messages go to ``batch.ignored`` with a ``kind``. ``parse_events`` gives the webhook route the
same events typed, so it can act on accepted connections and expired sessions. Pure functions
over bytes: the web layer, the fake gateway and the tests share one reading of the format.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from parley.channels.base import (
    InboundBatch,
    InboundMessage,
    InboundRole,
    JSONDict,
    StatusUpdate,
)
from parley.errors import InvalidSignature, MalformedPayload

CHANNEL: Final = "linkedin"
SIGNATURE_HEADER: Final = "X-Gateway-Signature"
SIGNATURE_SCHEME: Final = "v1"
SIGNATURE_TOLERANCE_SECONDS: Final = 300
MAX_NESTING: Final = 16  # the contract nests 2 levels; anything this deep is hostile


class GatewayEventKind(StrEnum):
    """What happened, in Parley's words (the gateway's ``event`` names are in ``EVENT_KINDS``)."""

    MESSAGE_RECEIVED = "message_received"
    MESSAGE_DELIVERED = "message_delivered"
    CONNECTION_ACCEPTED = "connection_accepted"
    SESSION_EXPIRED = "session_expired"


EVENT_KINDS: Final[dict[str, GatewayEventKind]] = {
    "message.received": GatewayEventKind.MESSAGE_RECEIVED,
    "message.delivered": GatewayEventKind.MESSAGE_DELIVERED,
    "invitation.accepted": GatewayEventKind.CONNECTION_ACCEPTED,
    "account.session_expired": GatewayEventKind.SESSION_EXPIRED,
}
GATEWAY_EVENT_NAMES: Final = {kind: name for name, kind in EVENT_KINDS.items()}


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    """One gateway event; ``contact`` is the lead it concerns (None for account events)."""

    kind: GatewayEventKind
    account_id: str
    contact: str | None
    event_id: str
    data: JSONDict = field(hash=False, compare=False)
    timestamp: datetime


# --- signatures -------------------------------------------------------------------------------


def sign(raw_body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``X-Gateway-Signature`` value the gateway would send for ``raw_body``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},{SIGNATURE_SCHEME}={_hmac_hex(t, raw_body, secret)}"


def verify_signature(
    raw_body: bytes,
    header_value: str | None,
    secret: str,
    *,
    now: float | None = None,
    tolerance: float = SIGNATURE_TOLERANCE_SECONDS,
) -> None:
    """Refuse bodies not signed with our secret, and signed ones replayed after ``tolerance``:
    the webhook URL is public and a captured request must not work forever."""
    if not secret:
        # An empty key would make every forged body "valid"; refuse all until it is set.
        raise InvalidSignature("the LinkedIn gateway webhook secret is not configured")
    if not header_value:
        raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
    t, digests = _signature_parts(header_value)
    current = time.time() if now is None else now
    if abs(current - t) > tolerance:
        raise InvalidSignature(f"{SIGNATURE_HEADER} timestamp {t} is outside {tolerance:g} s")
    expected = _hmac_hex(t, raw_body, secret)
    # Several v1 values are allowed so the gateway can sign with an old and a new secret.
    if not any(hmac.compare_digest(expected, digest) for digest in digests):
        raise InvalidSignature(f"{SIGNATURE_HEADER} does not match the body")


def _signature_parts(header_value: str) -> tuple[int, list[str]]:
    timestamps: list[str] = []
    digests: list[str] = []
    for item in header_value.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == SIGNATURE_SCHEME and _is_sha256_hex(value):
            digests.append(value.lower())
    if len(timestamps) != 1 or not timestamps[0].isdigit() or not digests:
        raise InvalidSignature(
            f"malformed {SIGNATURE_HEADER} header; expected t=<unix>,v1=<64 hex>"
        )
    return int(timestamps[0]), digests


def _hmac_hex(timestamp: int, raw_body: bytes, secret: str) -> str:
    signed = f"{timestamp}.".encode() + raw_body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _is_sha256_hex(digest: str) -> bool:
    return len(digest) == 64 and all(char in string.hexdigits for char in digest)


# --- parsing ----------------------------------------------------------------------------------


def parse_events(raw_body: bytes) -> list[GatewayEvent]:
    """The body's events, typed; events of kinds this Parley does not know are left out (they
    appear in ``parse_webhook(...).ignored``). A list, so batched bodies can come later."""
    event = _read_event(_load_document(raw_body))
    return [event] if event is not None else []


def parse_webhook(raw_body: bytes) -> InboundBatch:
    """Read a whole POST up front so a bad part refuses the body before anything is stored."""
    document = _load_document(raw_body)
    event = _read_event(document)
    batch = InboundBatch()
    if event is None:
        batch.ignored.append(_ignored(document, "unknown", "an event this Parley does not know"))
    elif event.kind is GatewayEventKind.MESSAGE_RECEIVED:
        batch.messages.append(_inbound_message(event, document))
    elif event.kind is GatewayEventKind.MESSAGE_DELIVERED:
        batch.statuses.append(_status_update(event))
    else:
        batch.ignored.append(_ignored(document, event.kind, "not a message", event))
    return batch


def _load_document(raw_body: bytes) -> JSONDict:
    try:
        document = json.loads(raw_body)
    except ValueError as exc:
        raise MalformedPayload(f"webhook body is not JSON: {exc}") from exc
    except RecursionError as exc:  # a hostile body must be a refusal, not a 500
        raise MalformedPayload("webhook body is nested too deeply") from exc
    if not isinstance(document, dict):
        raise MalformedPayload(f"webhook body is a JSON {type(document).__name__}, not an object")
    if _nested_deeper_than(document, MAX_NESTING):
        # Stored as-is later; deep bodies would only trouble the layers after us.
        raise MalformedPayload(f"webhook body is nested deeper than {MAX_NESTING} levels")
    return document


def _nested_deeper_than(document: JSONDict, limit: int) -> bool:
    """Without recursion: the body may be as deep as the JSON parser allowed."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        children = list(value.values()) if isinstance(value, dict) else value
        if not isinstance(children, list):
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _read_event(document: JSONDict) -> GatewayEvent | None:
    name = _required_str(document, "event", "webhook body")
    envelope = (
        _required_str(document, "account_id", "webhook body"),
        _required_str(document, "id", "webhook body"),
        _timestamp(document.get("timestamp")),
        _data_of(document),
    )
    kind = EVENT_KINDS.get(name)
    if kind is None:
        return None
    account_id, event_id, timestamp, data = envelope
    return GatewayEvent(
        kind=kind,
        account_id=account_id,
        contact=_CONTACT_READERS[kind](data),
        event_id=event_id,
        data=data,
        timestamp=timestamp,
    )


def _data_of(document: JSONDict) -> JSONDict:
    data = document.get("data", {})
    if not isinstance(data, dict):
        raise MalformedPayload("webhook body's 'data' is not an object")
    return data


def _sender(data: JSONDict) -> str:
    _required_str(data, "message_id", "message.received")
    _optional_strs(data, ("text", "from_name", "reply_to", "chat_id"), "message.received")
    return _required_str(data, "from", "message.received")


def _recipient(data: JSONDict) -> str | None:
    _required_str(data, "message_id", "message.delivered")
    _optional_strs(data, ("client_ref",), "message.delivered")
    return _optional_str(data, "to", "message.delivered")


def _accepter(data: JSONDict) -> str:
    _optional_strs(data, ("invitation_id", "client_ref"), "invitation.accepted")
    return _required_str(data, "profile", "invitation.accepted")


def _no_contact(data: JSONDict) -> None:
    return None


# Each reader checks the whole ``data`` of its event, so ``parse_events`` refuses exactly the
# bodies ``parse_webhook`` refuses, and returns the lead the event concerns.
_CONTACT_READERS: Final = {
    GatewayEventKind.MESSAGE_RECEIVED: _sender,
    GatewayEventKind.MESSAGE_DELIVERED: _recipient,
    GatewayEventKind.CONNECTION_ACCEPTED: _accepter,
    GatewayEventKind.SESSION_EXPIRED: _no_contact,
}


def _inbound_message(event: GatewayEvent, document: JSONDict) -> InboundMessage:
    text = _optional_str(event.data, "text", "message.received")
    readable = bool(text)  # an attachment-only message has nothing a campaign can read
    return InboundMessage(
        channel=CHANNEL,
        provider_message_id=str(event.data["message_id"]),
        identity_address=event.account_id,
        contact_address=str(event.contact),
        contact_name=_optional_str(event.data, "from_name", "message.received"),
        type="text" if readable else "unsupported",
        role=InboundRole.ANSWER if readable else InboundRole.UNSUPPORTED,
        text=text if readable else None,
        reply_id=None,
        context_message_id=_optional_str(event.data, "reply_to", "message.received"),
        timestamp=event.timestamp,
        raw=document,
    )


def _status_update(event: GatewayEvent) -> StatusUpdate:
    return StatusUpdate(
        channel=CHANNEL,
        provider_message_id=str(event.data["message_id"]),
        identity_address=event.account_id,
        status="delivered",
        recipient=event.contact,
        timestamp=event.timestamp,
        client_ref=_optional_str(event.data, "client_ref", "message.delivered"),
    )


def _ignored(
    document: JSONDict, kind: str, reason: str, event: GatewayEvent | None = None
) -> JSONDict:
    return {
        "channel": CHANNEL,
        "kind": str(kind),
        "event": document.get("event"),
        "event_id": document.get("id"),
        "account_id": document.get("account_id"),
        "contact": event.contact if event is not None else None,
        "reason": reason,
        "data": document.get("data", {}),
    }


def _required_str(item: JSONDict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"{where} has no {key!r}")
    return value


def _optional_str(item: JSONDict, key: str, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedPayload(f"{where} has a {key!r} that is not a string")
    return value


def _optional_strs(item: JSONDict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        _optional_str(item, key, where)


def _timestamp(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedPayload(f"webhook body has an invalid timestamp {value!r}")
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise MalformedPayload(f"webhook body has an invalid timestamp {value!r}") from exc
