"""What operators see of conversations: the JSON the CLI and the REST API both return."""

from __future__ import annotations

from typing import Any

from parley.db import Database, queries
from parley.db.models import CampaignVersion, Contact, Conversation, Message


def _summary(conv: Conversation, contact: Contact, campaign: CampaignVersion) -> dict[str, Any]:
    return {
        "id": conv.id,
        "uid": conv.uid,
        "channel": contact.channel,
        "contact": contact.address,
        "contact_name": contact.name,
        "status": conv.status,
        "campaign": campaign.name,
        "campaign_version": campaign.version,
        "current_node": conv.current_node,
        "step": conv.step,
        "waiting_for": conv.waiting_for,
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
    db: Database, *, limit: int = 100, status: str | None = None
) -> list[dict[str, Any]]:
    async with db.read() as session:
        rows = await queries.list_conversations(session, limit=limit, status=status)
    return [_summary(conv, contact, campaign) for conv, contact, campaign in rows]


async def show_conversation(db: Database, conversation_id: int) -> dict[str, Any]:
    async with db.read() as session:
        conv = await queries.get_conversation(session, conversation_id)
        contact = await queries.get_contact(session, conv.contact_id)
        campaign = await queries.get_campaign_version(session, conv.campaign_version_id)
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
