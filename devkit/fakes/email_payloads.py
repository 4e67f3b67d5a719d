"""Inbound-email webhook bodies as a provider relay would POST them (``parley.channels.email.wire``
documents the contract): for the demo and the tests. Not product code: the product only reads
this format.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Final

from parley.channels.base import JSONDict
from parley.channels.email.wire import SIGNATURE_HEADER, sign

CONTENT_TYPE: Final = "application/json"


def new_message_id(domain: str = "mail.example.net") -> str:
    """A unique Message-ID shaped like a mail client's."""
    return f"<{secrets.token_hex(12)}@{domain}>"


def build_inbound_reply(
    *,
    recipient: str,
    sender: str,
    text: str,
    subject: str | None = "Re: Hello",
    from_name: str | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    quoted: str | None = None,
    timestamp: int | None = None,
) -> JSONDict:
    """A lead's reply to ``recipient`` (our mailbox). ``quoted`` appends the history the way
    Gmail does: an "On ..., ... wrote:" line and the old text behind "> "."""
    body = text
    if quoted is not None:
        history = "\n".join(f"> {line}" if line else ">" for line in quoted.splitlines())
        body = f"{text}\n\nOn Mon, 8 Apr 2024 at 09:15, {recipient} wrote:\n{history}\n"
    return {
        "recipient": recipient,
        "sender": sender,
        "from_name": from_name,
        "subject": subject,
        "message_id": message_id or new_message_id(sender.rpartition("@")[2] or "example.net"),
        "in_reply_to": in_reply_to,
        "text": body,
        "timestamp": _unix(timestamp),
    }


def build_bounce(
    *,
    message_id: str,
    sender: str,
    recipient: str,
    reason: str | None = "550 5.1.1 The email account that you tried to reach does not exist",
    code: int | None = 550,
    bounce: str | None = None,
    timestamp: int | None = None,
) -> JSONDict:
    """A bounce of our message ``message_id``, sent from ``sender`` (our mailbox): hard unless
    ``bounce="soft"`` or a 4xx ``code`` says otherwise."""
    event = build_delivery_event(
        "bounced",
        message_id=message_id,
        sender=sender,
        recipient=recipient,
        reason=reason,
        code=code,
        timestamp=timestamp,
    )
    return event if bounce is None else {**event, "bounce": bounce}


def build_delivery_event(
    event: str,
    *,
    message_id: str,
    sender: str,
    recipient: str,
    reason: str | None = None,
    code: int | None = None,
    timestamp: int | None = None,
) -> JSONDict:
    """Any delivery event ("delivered", "bounced", "complained", or one Parley ignores)."""
    return {
        "event": event,
        "message_id": message_id,
        "sender": sender,
        "recipient": recipient,
        "reason": reason,
        "code": code,
        "timestamp": _unix(timestamp),
    }


def sign_inbound(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``X-Parley-Signature`` header value for ``body`` (signed now unless told)."""
    return sign(body, secret, _unix(timestamp))


def signed_request(
    payload: JSONDict, secret: str, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a signed POST carrying ``payload``."""
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": CONTENT_TYPE,
        SIGNATURE_HEADER: sign_inbound(body, secret, timestamp),
    }
    return body, headers


def _unix(timestamp: int | None) -> int:
    return timestamp if timestamp is not None else int(time.time())
