"""The per-identity action queue: enqueue with idempotency, park and unpark by channel.

An outreach ``send`` node never calls a provider itself: its step enqueues an action **in the
same transaction** as the conversation's state change (the row then waits with
``Wait(action)``), and the identity's dispatcher performs it when working hours and limits
allow (``parley.outreach``). The payload holds what the provider needs — the rendered text,
the recipient — and pointers back (conversation, node, step), never the transcript.

On PostgreSQL the enqueue also notifies ``parley_actions`` (delivered at commit), so a waiting
dispatcher performs a ready action now rather than at its next tick (``parley.action_signal``).

Queues: ``ready``, or parked while a channel cannot work: ``linkedin`` (the session expired),
``whatsapp`` (the access token expired), ``email-{mailbox}`` (a disconnected mailbox),
``credits`` (InMail credits ran out: InMails only, the seat's other actions keep going). Parked
actions keep their place (``not_before``, id) and go back in that order on reconnect, or when
the dispatcher finds the account healthy again (``parley.parked``). An action queued while its
queue is parked is parked at once behind the others: nothing is tried against an account
already known not to work.
``paused`` holds the actions the dispatcher found due while their conversation (or its
campaign) was paused: not skipped — the conversation still waits for them — and back in
``ready`` (or the channel's parked queue) when the conversation is released.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parley.conversation.state_machine import ActionIntent
from parley.db import queries
from parley.db.models import Action, Contact, Conversation, Identity, utcnow
from parley.errors import ChannelError, CreditsExhausted
from parley.vocabulary import (
    ACTION_SKIPPED,
    CHANNEL_OF,
    CREDITS,
    PARKED_TYPES,
    PAUSED,
    READY,
    ActionType,
    step_ref,
)


def recipient(contact: Contact, channel: str) -> str | None:
    """Where an action on ``channel`` goes for this contact: the contact's own address when it
    is on that channel, else its field of that name (``fields: {email: ..., linkedin: ...}``)."""
    if contact.channel == channel:
        return contact.address
    value = contact.fields.get(channel)
    return value if isinstance(value, str) and value else None


async def enqueue(
    session: AsyncSession,
    row: Conversation,
    contact: Contact,
    intent: ActionIntent,
    step: int,
    now: datetime,
) -> Action:
    """Queue the node's action for the conversation's identity; a replayed step finds the one
    it queued before (same idempotency key: the step's reference)."""
    channel = CHANNEL_OF[_action_type(intent.type)]
    identity = await session.get(Identity, row.identity_id)
    parked = None if identity is None else parked_queue_of(identity, channel, intent.type)
    payload = {
        "to": recipient(contact, channel),
        "text": intent.text,
        "subject": intent.subject,
        "template": intent.template,
        "node": row.current_node,
        "step": step,
    }
    action = await queries.actions.enqueue_action(
        session,
        {
            "identity_id": row.identity_id,
            "conversation_id": row.id,
            "channel": channel,
            "type": intent.type,
            "payload": payload,
            "queue": parked or READY,
            "not_before": now,
            "reason": None if parked is None else _parked_reason(identity, parked),
            "idempotency_key": step_ref(row.id, step),
            "seen_inbound_id": await queries.messages.last_inbound_id(session, row.id),
            "created_at": utcnow(),
            "updated_at": utcnow(),
        },
    )
    if action.status == "queued" and action.queue == READY:
        await queries.actions.notify_action_ready(session, action.identity_id)  # no wait for a tick
    return action


def channel_queue(identity: Identity, channel: str) -> str:
    """The queue a channel's actions wait in while the identity's account on it cannot work:
    ``email-{mailbox}`` (a LinkedIn seat's fallback mailbox is ``settings.email.address``),
    else the channel's name."""
    if channel == "email":
        nested = identity.settings.get("email")
        mailbox = nested.get("address") if isinstance(nested, dict) else None
        return f"email-{mailbox or identity.address}"
    return channel


def parked_queue(identity: Identity, channel: str, error: ChannelError) -> str:
    """The queue a channel's actions wait in while the identity cannot use it."""
    if isinstance(error, CreditsExhausted):
        return CREDITS
    return channel_queue(identity, channel)


def parked_queue_of(identity: Identity, channel: str, action_type: str) -> str | None:
    """The parked queue an action of this type must wait in now, or None when it may be
    tried: its channel's queue while that is parked (the session is known to be expired), else
    ``credits`` for an InMail while credits are out."""
    parked = identity.parked or {}
    queue = channel_queue(identity, channel)
    if queue in parked:
        return queue
    if action_type in PARKED_TYPES[CREDITS] and CREDITS in parked:
        return CREDITS
    return None


def _parked_reason(identity: Identity | None, queue: str) -> str:
    entry = (identity.parked if identity is not None else {}).get(queue) or {}
    why = entry.get("reason") if isinstance(entry, dict) else None
    return f"parked: {queue!r} is parked ({why or 'no reason recorded'})"


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
    queue = parked_queue_of(identity, channel, action_type)
    if queue is not None:
        await queries.actions.requeue_untried(
            session, action_id, queue, _parked_reason(identity, queue)
        )
    return queue


async def release_held(session: AsyncSession, conversation_id: int) -> int:
    """The conversation was released from its pause: the actions the dispatcher held for it go
    back in line with their idempotency key, so the same action is performed (once) in the
    identity's hours. Call it holding the conversation's row (a flushed update is enough): the
    dispatcher holds actions under that lock, so every hold is committed and seen here."""
    held = await queries.actions.held_actions(session, conversation_id, PAUSED)
    for action in held:
        identity = await queries.identities.get_identity(session, action.identity_id)
        action.queue = parked_queue_of(identity, action.channel, action.type) or READY
        action.reason, action.updated_at = "its conversation was resumed", utcnow()
        if action.queue == READY:
            await queries.actions.notify_action_ready(session, action.identity_id)
    return len(held)


async def skip_held(session: AsyncSession, conversation_id: int, reason: str) -> int:
    """The conversation ended while paused: what was held for it is skipped, never sent."""
    held = await queries.actions.held_actions(session, conversation_id, PAUSED)
    for action in held:
        action.status, action.outcome = "done", ACTION_SKIPPED
        action.reason, action.updated_at = reason[:2000], utcnow()
    return len(held)


def _action_type(value: str) -> ActionType:
    if value not in CHANNEL_OF:
        raise ValueError(f"unknown action type {value!r}")
    return value  # type: ignore[return-value]
