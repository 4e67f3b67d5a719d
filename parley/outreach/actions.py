"""The per-identity action queue: park and unpark by channel.

A conversation's step hands its action over with idempotency (``parley.conversation.handoff``,
in the same transaction as its state change); the identity's dispatcher performs it when
working hours and limits allow (``parley.outreach.dispatch``).

Queues: ``ready``, or parked while a channel cannot work: ``linkedin`` (the session expired),
``whatsapp`` (the access token expired), ``email-{mailbox}`` (a disconnected mailbox),
``credits`` (InMail credits ran out: InMails only, the seat's other actions keep going). Parked
actions keep their place (``not_before``, id) and go back in that order on reconnect, or when
the dispatcher finds the account healthy again (``parley.outreach.parked``). An action queued while
its queue is parked is parked at once behind the others: nothing is tried against an account
already known not to work.
``paused`` holds the actions the dispatcher found due while their conversation (or its
campaign) was paused: not skipped — the conversation still waits for them — and back in
``ready`` (or the channel's parked queue) when the conversation is released.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parley.db import queries
from parley.db.models import Identity
from parley.errors import ChannelError, CreditsExhausted
from parley.vocabulary import (
    CREDITS,
    PARKED_TYPES,
)


def parked_queue(identity: Identity, channel: str, error: ChannelError) -> str:
    """The queue a channel's actions wait in while the identity cannot use it."""
    if isinstance(error, CreditsExhausted):
        return CREDITS
    return queries.actions.channel_queue(identity, channel)


async def park(
    session: AsyncSession, identity: Identity, channel: str, queue: str, reason: str, now: datetime
) -> int:
    """Park the identity's queued actions on ``channel`` (of ``credits``: its InMails only):
    other channels, and a seat's other LinkedIn actions when only credits ran out, keep
    flowing."""
    moved = await queries.actions.park_actions(
        session, identity.id, channel, queue, now, types=PARKED_TYPES.get(queue)
    )
    identity.parked = {**identity.parked, queue: {"reason": reason, "since": now.isoformat()}}
    return moved


async def unpark(session: AsyncSession, identity: Identity, queue: str, now: datetime) -> int:
    """Move a parked queue's actions back to ``ready`` in their order and forget the parking:
    an operator's reconnect and the dispatcher's health check both end here. ``identity`` is
    locked by the caller."""
    moved = await queries.actions.unpark_queue(session, identity.id, queue, now)
    if queue in identity.parked:
        identity.parked = {k: v for k, v in identity.parked.items() if k != queue}
    return moved


async def park_if_known_down(
    session: AsyncSession, identity: Identity, action_id: int, channel: str, action_type: str
) -> str | None:
    """A claimed action whose account is parked goes to that queue untried (the queue was
    parked between its enqueue and its claim); returns the queue, or None to go on."""
    queue = queries.actions.parked_queue_of(identity, channel, action_type)
    if queue is not None:
        await queries.actions.requeue_untried(
            session, action_id, queue, queries.actions.parked_reason(identity, queue)
        )
    return queue
