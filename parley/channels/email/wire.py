"""The inbound-email webhook: proving a POST came from our provider, and reading it into neutral
events; plus the Message-ID scheme that ties a reply or a bounce back to the action we sent.

Replies reach us through an inbound-email provider (Mailgun routes, SendGrid Inbound Parse, ...)
or a small relay in front of one, which POSTs one JSON object per event. The contract is ours,
so every provider adapter speaks the same thing:

* a reply: ``{"recipient": <our mailbox>, "sender": <lead address>, "from_name": str | null,
  "subject": str | null, "message_id": "<...>", "in_reply_to": "<...>" | null, "text": str,
  "timestamp": <unix seconds>}``
* a delivery event about a message we sent: ``{"event": "bounced" | "delivered" |
  "complained", "message_id": "<our Message-ID>", "sender": <our mailbox>, "recipient": <lead
  address>, "reason": str | null, "code": <SMTP code> | null, "bounce": "hard" | "soft" |
  null, "timestamp": <unix seconds>}``. A bounce is hard (the address is suppressed and its
  sequence ends) when ``bounce`` says so, else when ``code`` is a 5xx, else when neither says
  (providers' "bounced" events are permanent failures); ``"soft"`` or a 4xx code is a soft
  bounce (the message failed, the address stays). A complaint always suppresses.

Every POST carries ``X-Parley-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{body}">``.
Pure functions over bytes and dicts; writing the format is test tooling
(``devkit.fakes.email_payloads``), except ``sign``, which provider relays need too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import string
import time
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any, Final
from urllib.parse import quote, unquote

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

from parley.channels.base import InboundBatch, InboundMessage, InboundRole, JSONDict, StatusUpdate
from parley.errors import ConfigurationError, InvalidSignature, MalformedPayload
from parley.vocabulary import DeliveryStatus, SuppressionReason

CHANNEL: Final = "email"
MESSAGE_TYPE: Final = "email"
SIGNATURE_HEADER: Final = "X-Parley-Signature"
SIGNATURE_TOLERANCE_SECONDS: Final = 300.0
# What each delivery event means for the message it is about.
EVENT_STATUSES: Final[dict[str, DeliveryStatus]] = {
    "delivered": DeliveryStatus.DELIVERED,
    "bounced": DeliveryStatus.FAILED,
    "complained": DeliveryStatus.FAILED,
}


# --- Message-IDs ------------------------------------------------------------------------------

# atext (RFC 5322 3.2.3) minus "%" (our escape) and "." (dot-atoms forbid leading, trailing and
# doubled dots): everything else in a client_ref is percent-encoded, so any ref fits and decodes.
_ID_SAFE: Final = "!#$&'*+-/=?^_`{|}~"
_ID_LEFT_CHARS: Final = frozenset(string.ascii_letters + string.digits + _ID_SAFE + "%")


def message_id_for(client_ref: str, domain: str) -> str:
    """``<{client_ref}@{domain}>``, deterministic so a retried send repeats the same Message-ID
    and a provider or mail client that has seen it can drop the duplicate."""
    if not client_ref:
        raise ValueError("a Message-ID needs a non-empty client_ref")
    local = quote(client_ref, safe=_ID_SAFE).replace(".", "%2E")
    return f"<{local}@{domain.lower()}>"


def client_ref_of(message_id: str, domain: str) -> str | None:
    """The client_ref inside one of our Message-IDs (sent from ``domain``), else None."""
    local, at, right = normalize_message_id(message_id)[1:-1].rpartition("@")
    if not at or not local or not set(local) <= _ID_LEFT_CHARS:
        return None
    try:
        client_ref = unquote(local, errors="strict")
    except UnicodeDecodeError:
        return None
    # Only our own encoding round-trips: a foreign id at our domain is not mistaken for ours.
    ours = message_id_for(client_ref, domain)
    return client_ref if ours == f"<{local}@{right.lower()}>" else None


def normalize_message_id(value: str) -> str:
    """The first msg-id in ``value``, in angle brackets: providers disagree about the brackets,
    and the id is what a reply is matched on."""
    first = value.strip().split()[0] if value.strip() else ""
    return f"<{first.removeprefix('<').removesuffix('>')}>"


def mailbox_domain(address: str) -> str:
    """The ASCII domain of a mailbox address, as it appears in our Message-IDs."""
    return str(_validated(address).ascii_domain).lower()


def _validated(address: str) -> ValidatedEmail:
    """Syntax only, and ``.test`` domains allowed: addresses we are told about (our mailboxes,
    the provider's view of a sender) need no deliverability opinion, and dev stacks use them."""
    return validate_email(address, check_deliverability=False, test_environment=True)


# --- signatures -------------------------------------------------------------------------------


def sign(raw_body: bytes, secret: str, timestamp: int) -> str:
    """The ``X-Parley-Signature`` value for ``raw_body`` signed at ``timestamp``."""
    return f"t={timestamp},v1={_hmac_hex(raw_body, secret, timestamp)}"


def verify_signature(
    raw_body: bytes, header_value: str | None, secret: str, *, now: float | None = None
) -> None:
    """Refuse any body not signed with our secret within the last five minutes: the URL is
    public, and the timestamp inside the HMAC stops a captured POST from being replayed later."""
    timestamp, digests = _read_signature_header(header_value)
    current = time.time() if now is None else now
    if abs(current - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
        raise InvalidSignature(
            f"{SIGNATURE_HEADER} timestamp {timestamp} is more than "
            f"{SIGNATURE_TOLERANCE_SECONDS:g} s from now: a replay or a wrong clock"
        )
    expected = _hmac_hex(raw_body, secret, timestamp)
    # Several v1 values let a relay sign with the old and the new secret while rotating.
    if not any(hmac.compare_digest(expected, digest) for digest in digests):
        raise InvalidSignature(f"{SIGNATURE_HEADER} does not match the body")


def _read_signature_header(header_value: str | None) -> tuple[int, list[str]]:
    if not header_value:
        raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
    timestamps: list[str] = []
    digests: list[str] = []
    for part in header_value.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            digests.append(value.lower())
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        raise InvalidSignature(f"malformed {SIGNATURE_HEADER} header; expected t=<unix>,v1=<hex>")
    if not digests or not all(_is_sha256_hex(digest) for digest in digests):
        raise InvalidSignature(f"malformed {SIGNATURE_HEADER} header; v1 must be 64 hex digits")
    return int(timestamps[0]), digests


def _hmac_hex(raw_body: bytes, secret: str, timestamp: int) -> str:
    if not secret:
        # An empty key would make every forged body "valid".
        raise ConfigurationError("the email webhook secret is empty")
    signed = f"{timestamp}.".encode() + raw_body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def _is_sha256_hex(digest: str) -> bool:
    return len(digest) == 64 and all(char in string.hexdigits for char in digest)


# --- parsing ----------------------------------------------------------------------------------


def parse_inbound(raw_body: bytes) -> InboundBatch:
    """Read one POST up front, so a bad field refuses the body before anything is stored.
    A body with an ``event`` is about a message we sent; any other body is a reply."""
    document = _load_document(raw_body)
    if "event" not in document:
        return InboundBatch(messages=[_reply(document)])
    event = _required_str(document, "event")
    if event not in EVENT_STATUSES:
        # Providers report more (opened, clicked, ...): recorded, not refused, so adding an
        # event type upstream never turns into rejected deliveries.
        reason = f"only {sorted(EVENT_STATUSES)} events are handled"
        ignored = {"channel": CHANNEL, "kind": "ignored_event", "event": event, "reason": reason}
        return InboundBatch(ignored=[ignored])
    return InboundBatch(statuses=[_status(document, EVENT_STATUSES[event])])


def _load_document(raw_body: bytes) -> JSONDict:
    try:
        document = json.loads(raw_body)
    except ValueError as exc:  # also bytes that are not UTF-8
        raise MalformedPayload(f"webhook body is not JSON: {exc}") from exc
    except RecursionError as exc:  # a hostile, deeply nested body must not be a 500
        raise MalformedPayload("webhook body is nested too deeply") from exc
    if not isinstance(document, dict):
        raise MalformedPayload(f"webhook body is a JSON {type(document).__name__}, not an object")
    return document


def _reply(document: JSONDict) -> InboundMessage:
    text = document.get("text")
    if not isinstance(text, str):
        raise MalformedPayload("a reply has no 'text' string")
    in_reply_to = _optional_str(document, "in_reply_to")
    return InboundMessage(
        channel=CHANNEL,
        provider_message_id=_message_id(document),
        identity_address=_address(document, "recipient"),
        contact_address=_address(document, "sender"),
        contact_name=_optional_str(document, "from_name") or None,
        type=MESSAGE_TYPE,
        role=InboundRole.ANSWER,
        text=strip_quoted(text),
        reply_id=None,
        context_message_id=normalize_message_id(in_reply_to) if in_reply_to else None,
        timestamp=_timestamp(document.get("timestamp")),
        raw=document,
    )


def _status(document: JSONDict, status: DeliveryStatus) -> StatusUpdate:
    message_id = _message_id(document)
    mailbox = _address(document, "sender")
    errors: list[JSONDict] = []
    if status is DeliveryStatus.FAILED:
        code = document.get("code")
        reason = _optional_str(document, "reason") or str(document["event"])
        errors.append({"code": code if isinstance(code, int) else None, "title": reason})
    return StatusUpdate(
        channel=CHANNEL,
        provider_message_id=message_id,
        identity_address=mailbox,
        status=status.value,
        recipient=_address(document, "recipient"),
        timestamp=_timestamp(document.get("timestamp")),
        client_ref=client_ref_of(message_id, mailbox_domain(mailbox)),
        errors=errors,
        suppresses=_suppresses(document),
    )


def _suppresses(document: JSONDict) -> SuppressionReason | None:
    """What the event means for the do-not-contact list (see the module doc)."""
    event = document["event"]
    if event == "complained":
        return "complained"
    if event != "bounced":
        return None
    kind = _optional_str(document, "bounce")
    if kind not in (None, "hard", "soft"):
        raise MalformedPayload(f"'bounce' must be 'hard', 'soft' or null, not {kind!r}")
    code = document.get("code")
    if kind is None and isinstance(code, int) and not isinstance(code, bool):
        kind = "soft" if 400 <= code < 500 else "hard"
    return None if kind == "soft" else "bounced"


def _message_id(document: JSONDict) -> str:
    message_id = normalize_message_id(_required_str(document, "message_id"))
    if message_id == "<>":
        raise MalformedPayload("'message_id' is empty")
    return message_id


def _address(document: JSONDict, key: str) -> str:
    """A mailbox address, lowercased so "Ada@Example.com" and "ada@example.com" are one contact
    (providers treat local parts case-insensitively in practice). ``Name <addr>`` is accepted."""
    _, address = parseaddr(_required_str(document, key))
    try:
        return str(_validated(address).normalized).lower()
    except EmailNotValidError as exc:
        raise MalformedPayload(f"{key!r} is not an email address: {exc}") from exc


def _required_str(document: JSONDict, key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedPayload(f"the body has no {key!r} string")
    return value


def _optional_str(document: JSONDict, key: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedPayload(f"{key!r} must be a string or null")
    return value


def _timestamp(value: Any) -> datetime:
    """Unix seconds as a number or a numeric string (some providers add fractions)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedPayload(f"invalid timestamp {value!r}; expected unix seconds")
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise MalformedPayload(f"invalid timestamp {value!r}; expected unix seconds") from exc


# --- what a campaign reads as the answer ------------------------------------------------------

_ATTRIBUTION_START: Final = re.compile(r"^\s*On\s", re.IGNORECASE)
_ATTRIBUTION_END: Final = re.compile(r"\bwrote:\s*$", re.IGNORECASE)
_ORIGINAL_MESSAGE: Final = re.compile(r"^\s*-{2,}\s*Original Message\s*-{2,}\s*$", re.IGNORECASE)


def strip_quoted(text: str) -> str | None:
    """The new part of a reply, or None when nothing is left. Deliberately simple, for replies
    written on top: lines starting with ">" are dropped, and everything from the first quote
    attribution ("On <date>, <someone> wrote:", also wrapped over two lines), an Outlook
    "-----Original Message-----" line or a "-- " signature separator on is cut off. Text written
    below the quote (bottom-posting) is lost; the raw body keeps it."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        if _starts_history(lines, index):
            break
        if not line.lstrip().startswith(">"):
            kept.append(line.rstrip())
    return "\n".join(kept).strip() or None


def _starts_history(lines: list[str], index: int) -> bool:
    line = lines[index]
    if line.rstrip() == "--" or _ORIGINAL_MESSAGE.match(line):
        return True
    if not _ATTRIBUTION_START.match(line):
        return False
    following = lines[index + 1] if index + 1 < len(lines) else ""
    return bool(_ATTRIBUTION_END.search(line) or _ATTRIBUTION_END.search(following))
