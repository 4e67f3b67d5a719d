"""LinkedIn gateway webhook bodies as the gateway sends them, signed: for the fake gateway, the
demo and the tests. Not product code: the product only reads this format (``wire``).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from parley.channels.base import JSONDict
from parley.channels.linkedin.wire import GATEWAY_EVENT_NAMES, SIGNATURE_HEADER, GatewayEventKind
from parley.channels.linkedin.wire import sign as sign_body


def new_id(prefix: str) -> str:
    """A gateway-style id (``msg_3f9a...``): unique, and says what it names."""
    return f"{prefix}_{secrets.token_hex(12)}"


def build_event(
    kind: GatewayEventKind,
    *,
    account_id: str,
    data: JSONDict,
    event_id: str | None = None,
    timestamp: int | None = None,
) -> JSONDict:
    """The envelope every gateway event shares."""
    return {
        "event": GATEWAY_EVENT_NAMES[kind],
        "id": event_id or new_id("evt"),
        "account_id": account_id,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "data": data,
    }


def build_message_received(
    *,
    account_id: str,
    from_profile: str,
    text: str | None,
    from_name: str | None = None,
    message_id: str | None = None,
    chat_id: str | None = None,
    reply_to: str | None = None,
    **envelope: Any,
) -> JSONDict:
    """A lead's message to one of our seats (``text=None``: an attachment-only message)."""
    data = _without_none(
        message_id=message_id or new_id("msg"),
        chat_id=chat_id or f"chat_{from_profile}",
        text=text,
        reply_to=reply_to,
    )
    data["from"] = from_profile
    if from_name is not None:
        data["from_name"] = from_name
    return build_event(
        GatewayEventKind.MESSAGE_RECEIVED, account_id=account_id, data=data, **envelope
    )


def build_message_delivered(
    *,
    account_id: str,
    message_id: str,
    to: str,
    client_ref: str | None,
    **envelope: Any,
) -> JSONDict:
    """LinkedIn shows our message as delivered; ``client_ref`` echoes the Idempotency-Key."""
    data = _without_none(message_id=message_id, to=to, client_ref=client_ref)
    return build_event(
        GatewayEventKind.MESSAGE_DELIVERED, account_id=account_id, data=data, **envelope
    )


def build_invitation_accepted(
    *,
    account_id: str,
    profile: str,
    invitation_id: str | None = None,
    client_ref: str | None = None,
    **envelope: Any,
) -> JSONDict:
    """A lead accepted our connection request (or one sent outside Parley: no ids then)."""
    data = _without_none(profile=profile, invitation_id=invitation_id, client_ref=client_ref)
    return build_event(
        GatewayEventKind.CONNECTION_ACCEPTED, account_id=account_id, data=data, **envelope
    )


def build_session_expired(
    *, account_id: str, reason: str = "LinkedIn logged the seat out", **envelope: Any
) -> JSONDict:
    """The gateway lost the seat's LinkedIn session: a human must log in again."""
    return build_event(
        GatewayEventKind.SESSION_EXPIRED,
        account_id=account_id,
        data={"reason": reason},
        **envelope,
    )


def signed_request(
    payload: Any, secret: str, *, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of the gateway's POST, signed as of ``timestamp`` (default now)."""
    raw = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign_body(raw, secret, timestamp),
    }
    return raw, headers


def _without_none(**values: Any) -> JSONDict:
    return {key: value for key, value in values.items() if value is not None}
