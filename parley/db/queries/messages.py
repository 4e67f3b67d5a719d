"""Queries of messages: the inbox (inbound, consumed in order) and the outbox (intent, claim,
delivery status), and transcripts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Message, utcnow
from parley.db.notifications import INBOX_CHANNEL
from parley.db.queries._common import dialect_of, insert_ignoring_conflict, insert_row, rowcount
from parley.vocabulary import DELIVERY_RANK, DeliveryStatus, Direction, InboundStatus

# Our own claim states: set on purpose by the outbox, never taken from a provider callback.
_CLAIM_STATUSES = frozenset({DeliveryStatus.PENDING, DeliveryStatus.SENDING})


async def insert_inbound(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Store an inbound message once; ``None`` means the provider re-delivered a known id."""
    stmt = (
        insert_row(session, Message)
        .values(
            direction=Direction.IN,
            status=InboundStatus.RECEIVED,
            created_at=utcnow(),
            updated_at=utcnow(),
            **values,
        )
        .on_conflict_do_nothing(index_elements=["provider_message_id"])
        .returning(Message.id)
    )
    message_id = (await session.execute(stmt)).scalar_one_or_none()
    if message_id is not None and dialect_of(session) == "postgresql":
        # Delivered at commit: wakes a run waiting hot for this conversation (parley.inbox_signal).
        await session.execute(select(func.pg_notify(INBOX_CHANNEL, str(values["conversation_id"]))))
    return message_id


async def inbound_exists(session: AsyncSession, provider_message_id: str) -> bool:
    stmt = select(exists().where(Message.provider_message_id == provider_message_id))
    return bool(await session.scalar(stmt))


def unconsumed(conversation_id: Any) -> Any:
    return (
        (Message.conversation_id == conversation_id)
        & (Message.direction == Direction.IN)
        & Message.consumed_step.is_(None)
    )


async def first_unconsumed_inbound(session: AsyncSession, conversation_id: int) -> Message | None:
    stmt = select(Message).where(unconsumed(conversation_id)).order_by(Message.id).limit(1)
    return (await session.execute(stmt)).scalar_one_or_none()


async def unread_inbound(session: AsyncSession, conversation_id: int) -> list[Message]:
    stmt = select(Message).where(unconsumed(conversation_id)).order_by(Message.id)
    return list((await session.execute(stmt)).scalars())


async def move_inbound(
    session: AsyncSession, messages: Sequence[Message], conversation_id: int, *, trigger_step: int
) -> None:
    """Re-file messages under another conversation; the first becomes its trigger."""
    for index, message in enumerate(messages):
        message.conversation_id = conversation_id
        message.consumed_step = trigger_step if index == 0 else None
        message.updated_at = utcnow()


async def has_unconsumed_inbound(session: AsyncSession, conversation_id: int) -> bool:
    return bool(await session.scalar(select(exists().where(unconsumed(conversation_id)))))


async def mark_consumed(session: AsyncSession, message_id: int, step: int) -> None:
    await session.execute(
        update(Message)
        .where(Message.id == message_id)
        .values(consumed_step=step, status=InboundStatus.CONSUMED, updated_at=utcnow())
    )


async def last_heard_at(session: AsyncSession, conversation_id: int) -> datetime | None:
    """When the contact last wrote in this conversation (what an inactivity timeout counts
    from)."""
    stmt = select(func.max(Message.created_at)).where(
        Message.conversation_id == conversation_id, Message.direction == Direction.IN
    )
    value = await session.scalar(stmt)
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


async def outbound_by_ref(session: AsyncSession, client_ref: str) -> Message | None:
    stmt = (
        select(Message)
        .where(Message.client_ref == client_ref)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def ensure_outbound_intent(
    session: AsyncSession,
    *,
    conversation_id: int,
    step: int,
    client_ref: str,
    text: str,
    payload: dict[str, Any],
) -> Message:
    """Record what we are about to send before sending it (docs/architecture.md, rule 4)."""
    await insert_ignoring_conflict(
        session,
        Message,
        {
            "conversation_id": conversation_id,
            "direction": Direction.OUT,
            "client_ref": client_ref,
            "type": payload.get("type", "text"),
            "text": text,
            "payload": payload,
            "status": DeliveryStatus.PENDING,
            "step": step,
            "created_at": utcnow(),
            "updated_at": utcnow(),
        },
        ("client_ref",),
    )
    row = await outbound_by_ref(session, client_ref)
    assert row is not None
    return row


async def claim_for_sending(session: AsyncSession, client_ref: str, now: datetime) -> bool:
    """pending -> sending in one conditional UPDATE: of two executions, exactly one wins."""
    result = await session.execute(
        update(Message)
        .where(Message.client_ref == client_ref, Message.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.SENDING, claimed_at=now, updated_at=now)
    )
    return rowcount(result) == 1


async def take_over_claim(
    session: AsyncSession, client_ref: str, observed: datetime | None, now: datetime
) -> bool:
    """Take over a ``sending`` claim nobody resolved, only if it is still the one observed."""
    condition = Message.claimed_at.is_(None) if observed is None else Message.claimed_at == observed
    result = await session.execute(
        update(Message)
        .where(
            Message.client_ref == client_ref, Message.status == DeliveryStatus.SENDING, condition
        )
        .values(claimed_at=now, updated_at=now)
    )
    return rowcount(result) == 1


async def set_outbound_status(
    session: AsyncSession,
    message: Message,
    status: DeliveryStatus,
    *,
    provider_message_id: str | None = None,
    error: str | None = None,
) -> None:
    if provider_message_id and not message.provider_message_id:
        message.provider_message_id = provider_message_id
    current = DeliveryStatus(message.status)
    if status in _CLAIM_STATUSES or DELIVERY_RANK[status] > DELIVERY_RANK[current]:
        message.status = status
    if error:
        message.error = error
    message.updated_at = utcnow()


async def apply_delivery_status(
    session: AsyncSession,
    *,
    provider_message_id: str,
    client_ref: str | None,
    status: str,
    error: str | None,
) -> Message | None:
    """A provider status callback; matched by our client_ref first (it can arrive before the
    send call has returned), then by the provider's id."""
    message = await outbound_by_ref(session, client_ref) if client_ref else None
    if message is None:
        stmt = select(Message).where(
            Message.provider_message_id == provider_message_id, Message.direction == Direction.OUT
        )
        message = (await session.execute(stmt)).scalar_one_or_none()
    if message is None:
        return None
    if status not in DELIVERY_RANK or status in _CLAIM_STATUSES:
        return message  # a status we do not track (e.g. "deleted"): matched, nothing to change
    await set_outbound_status(
        session,
        message,
        DeliveryStatus(status),
        provider_message_id=provider_message_id,
        error=error,
    )
    return message


async def transcript(session: AsyncSession, conversation_id: int) -> list[Message]:
    stmt = select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
    return list((await session.execute(stmt)).scalars())


async def drop_unsent(session: AsyncSession, conversation_id: int, reason: str) -> int:
    """An ended conversation's intents that never went out are dropped, never sent later."""
    result = await session.execute(
        update(Message)
        .where(
            Message.conversation_id == conversation_id,
            Message.direction == Direction.OUT,
            Message.status == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.DROPPED, error=reason[:2000], updated_at=utcnow())
    )
    return rowcount(result)


async def last_inbound_id(session: AsyncSession, conversation_id: int) -> int | None:
    stmt = select(func.max(Message.id)).where(
        Message.conversation_id == conversation_id, Message.direction == Direction.IN
    )
    value = await session.scalar(stmt)
    return None if value is None else int(value)


async def inbound_after(session: AsyncSession, conversation_id: int, after_id: int | None) -> bool:
    condition = (Message.conversation_id == conversation_id) & (Message.direction == Direction.IN)
    if after_id is not None:
        condition = condition & (Message.id > after_id)
    return bool(await session.scalar(select(exists().where(condition))))


async def transcript_tail(
    session: AsyncSession, conversation_id: int, limit: int
) -> tuple[list[Message], int]:
    """The last ``limit`` messages in order, and how many the conversation has in all."""
    total = await session.scalar(
        select(func.count(Message.id)).where(Message.conversation_id == conversation_id)
    )
    stmt = (
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.id.desc())
        .limit(limit)
    )
    newest_first = list((await session.execute(stmt)).scalars())
    return newest_first[::-1], int(total or 0)
