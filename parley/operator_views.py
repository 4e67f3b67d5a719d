"""What operators see of conversations: the JSON the CLI and the REST API both return, and the
masked form of a contact's address for places many people can read (Prefect run names,
artifacts, logs)."""

from __future__ import annotations

from typing import Any

from parley.db import Database, queries
from parley.db.models import CampaignVersion, Contact, Conversation, Message
from parley.state_machine import Status

MASK = "•"


def mask_address(address: str) -> str:
    """Hide most of a phone number or mailbox, whatever its length: at least half the
    characters are masked, so a short number is never shown in full."""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}{MASK * 3}@{domain}"
    plus = "+" if address.startswith("+") or address.isdigit() else ""
    digits = address.lstrip("+")
    shown = min(3, len(digits) // 4), min(4, len(digits) // 4)
    hidden = len(digits) - sum(shown)
    return f"{plus}{digits[: shown[0]]}{MASK * hidden}{digits[len(digits) - shown[1] :]}"


def _summary(conv: Conversation, contact: Contact, campaign: CampaignVersion) -> dict[str, Any]:
    return {
        "id": conv.id,
        "uid": conv.uid,
        "channel": contact.channel,
        "contact": contact.address,
        "contact_name": contact.name,
        "status": conv.status.value,
        "campaign": campaign.name,
        "campaign_version": campaign.version,
        "current_node": conv.current_node,
        "step": conv.step,
        "waiting_for": conv.waiting_for,
        "wake_at": conv.wake_at.isoformat() if conv.wake_at else None,
        "flow_run_id": conv.flow_run_id,
        "updated_at": conv.updated_at.isoformat(),
    }


def _message(message: Message) -> dict[str, Any]:
    return {
        "direction": message.direction,
        "type": message.type,
        "text": message.text,
        "provider_message_id": message.provider_message_id,
        "status": message.status,
        "error": message.error,
        "created_at": message.created_at.isoformat(),
    }


async def list_conversations(
    db: Database, *, limit: int = 100, status: Status | None = None
) -> list[dict[str, Any]]:
    async with db.read() as session:
        rows = await queries.list_conversations(session, limit=limit, status=status)
    return [_summary(conv, contact, campaign) for conv, contact, campaign in rows]


async def show_conversation(db: Database, conversation_id: int) -> dict[str, Any]:
    async with db.read() as session:
        conv, contact, campaign = await queries.conversation_with_context(session, conversation_id)
        messages = await queries.transcript(session, conversation_id)
    detail = _summary(conv, contact, campaign)
    detail.update(
        variables=conv.variables,
        waiting_since=conv.waiting_since.isoformat() if conv.waiting_since else None,
        last_error=conv.last_error,
        created_at=conv.created_at.isoformat(),
        ended_at=conv.ended_at.isoformat() if conv.ended_at else None,
        messages=[_message(m) for m in messages],
    )
    return detail
