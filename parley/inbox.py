"""Storing inbound provider events once, and the webhook's half of the wake-up handshake.

Each message is stored in one transaction together with its contact and, if none is active, a
new conversation ("signal-with-start"). Under the same conversation row lock the flow takes
before it goes to sleep, we read the conversation's status and decide the wake-up: a suspended
run needs a resume, a new conversation needs a flow run, a running or hot one will see the
message by itself. The wake-up is done after commit, so a Prefect outage never loses a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign import parse_campaign
from parley.channels.whatsapp_webhook import InboundMessage, StatusUpdate, WebhookBatch
from parley.db import Database, queries
from parley.db.models import CampaignVersion, Conversation
from parley.errors import NotFound

CHANNEL = "whatsapp"
# What a person can answer a question with; the rest is kept in the transcript only.
ANSWER_TYPES = frozenset(
    {
        "text",
        "interactive",
        "button",
        "image",
        "video",
        "document",
        "audio",
        "sticker",
        "location",
        "contacts",
    }
)
TRANSCRIPT_ONLY_TYPES = frozenset({"reaction"})

# consumed_step of inbound rows that are not answers (a conversation's trigger, reactions).
TRIGGER_STEP = -1

WakeAction = Literal["start", "resume"]


@dataclass(frozen=True)
class WakeUp:
    conversation_id: int
    action: WakeAction
    flow_run_id: str | None


@dataclass
class StoreResult:
    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    ignored: int = 0
    wakeups: list[WakeUp] = field(default_factory=list)


async def store_batch(db: Database, batch: WebhookBatch, campaign_name: str) -> StoreResult:
    result = StoreResult()
    for message in batch.messages:
        if message.type not in ANSWER_TYPES | TRANSCRIPT_ONLY_TYPES:
            await _record(db, "unsupported_message", message.raw)
            result.ignored += 1
            continue
        wakeup, inserted = await store_message(db, message, campaign_name)
        result.stored += int(inserted)
        result.duplicates += int(not inserted)
        if wakeup is not None and wakeup not in result.wakeups:
            result.wakeups.append(wakeup)
    for status in batch.statuses:
        result.statuses += int(await apply_status(db, status))
    for item in batch.ignored:
        await _record(db, str(item.get("kind", "ignored")), item)
        result.ignored += 1
    return result


async def store_message(
    db: Database, message: InboundMessage, campaign_name: str
) -> tuple[WakeUp | None, bool]:
    async with db.transaction() as session:
        identity = await queries.ensure_identity(session, CHANNEL, message.phone_number_id)
        contact = await queries.ensure_contact(
            session, CHANNEL, message.from_phone, message.contact_name
        )
        conversation = await queries.lock_active_conversation(session, identity.id, contact.id)
        created = False
        if conversation is None:  # only a new conversation needs the campaign
            campaign = await _campaign_for_new(session, campaign_name)
            conversation, created = await queries.open_conversation(
                session, identity.id, contact.id, campaign, _start_node(campaign)
            )
        values = _inbound_values(conversation, message)
        if created:
            values["consumed_step"] = TRIGGER_STEP  # it started the conversation; no answer
        message_id = await queries.insert_inbound(session, values)
        if message_id is None:
            return None, False
        return _wakeup_for(conversation, created), True


async def _campaign_for_new(session: AsyncSession, name: str) -> CampaignVersion:
    try:
        return await queries.latest_campaign_version(session, name)
    except NotFound as exc:
        raise NotFound(f"{exc}; the webhook installs PARLEY_DEFAULT_CAMPAIGN at start") from exc


def _start_node(campaign: CampaignVersion) -> str:
    return _start_node_of(campaign.id, campaign.source)


@lru_cache(maxsize=64)
def _start_node_of(version_id: int, source: str) -> str:
    """Versions are immutable: parse each once per process, not once per inbound message."""
    return parse_campaign(source, source=f"campaign version {version_id}").start


def _inbound_values(conversation: Conversation, message: InboundMessage) -> dict[str, object]:
    values: dict[str, object] = {
        "conversation_id": conversation.id,
        "provider_message_id": message.provider_message_id,
        "type": message.type,
        "text": message.text,
        "reply_id": message.reply_id,
        "payload": message.raw,
    }
    if message.type in TRANSCRIPT_ONLY_TYPES:
        values["consumed_step"] = TRIGGER_STEP
    return values


def _wakeup_for(conversation: Conversation, created: bool) -> WakeUp | None:
    if created or (conversation.status == "pending" and conversation.flow_run_id is None):
        return WakeUp(conversation.id, "start", None)
    if conversation.status == "suspended":
        return WakeUp(conversation.id, "resume", conversation.flow_run_id)
    return None


async def apply_status(db: Database, status: StatusUpdate) -> bool:
    error = (
        "; ".join(f"{e.get('code')}: {e.get('title') or e.get('message')}" for e in status.errors)
        or None
    )
    async with db.transaction() as session:
        message = await queries.apply_delivery_status(
            session,
            provider_message_id=status.provider_message_id,
            client_ref=status.client_ref,
            status=status.status,
            error=error,
        )
        if message is None:
            await queries.record_webhook_event(
                session,
                "whatsapp",
                "unmatched_status",
                {
                    "id": status.provider_message_id,
                    "status": status.status,
                    "client_ref": status.client_ref,
                },
            )
            return False
    return True


async def _record(db: Database, kind: str, payload: dict[str, object]) -> None:
    async with db.transaction() as session:
        await queries.record_webhook_event(session, "whatsapp", kind, dict(payload))
