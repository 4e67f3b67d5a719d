"""The hand-off of an outreach action: a send node's step queues it for its identity's
dispatcher, and the conversation takes back what the dispatcher held for it.

An outreach ``send`` node never calls a provider itself: its step enqueues an action **in the
same transaction** as the conversation's state change (the row then waits with
``Wait(action)``), and the identity's dispatcher performs it when working hours and limits
allow (``parley.outreach.dispatch``). The payload holds what the provider needs — the rendered
text, the recipient — and pointers back (conversation, node, step), never the transcript. An
action queued while its account is parked goes to that parked queue at once, behind the
others (``queries.actions.parked_queue_of``).

On PostgreSQL the enqueue also notifies ``parley_actions`` (delivered at commit), so a waiting
dispatcher performs a ready action now rather than at its next tick (``parley.action_signal``).

The queue itself — parking, unparking, the dispatcher's claim — is the outreach wing's
(``parley.outreach.actions``); this module only writes through ``parley.db.queries.actions``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parley.conversation.state_machine import ActionIntent
from parley.db import queries
from parley.db.models import Action, Contact, Conversation, Identity, utcnow
from parley.vocabulary import ACTION_SKIPPED, CHANNEL_OF, PAUSED, READY, ActionType, step_ref


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
    parked = (
        None
        if identity is None
        else queries.actions.parked_queue_of(identity, channel, intent.type)
    )
    payload = {
        "to": recipient(contact, channel),
        "text": intent.text,
        "subject": intent.subject,
        "template": intent.template,
        "node": row.current_node,
        "step": step,
    }
    payload.update({name: value for name, value in _media(intent).items() if value is not None})
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
            "reason": None if parked is None else queries.actions.parked_reason(identity, parked),
            "idempotency_key": step_ref(row.id, step),
            "seen_inbound_id": await queries.messages.last_inbound_id(session, row.id),
            "created_at": utcnow(),
            "updated_at": utcnow(),
        },
    )
    if action.status == "queued" and action.queue == READY:
        await queries.actions.notify_action_ready(session, action.identity_id)  # no wait for a tick
    return action


async def release_held(session: AsyncSession, conversation_id: int) -> int:
    """The conversation was released from its pause: the actions the dispatcher held for it go
    back in line with their idempotency key, so the same action is performed (once) in the
    identity's hours. Call it holding the conversation's row (a flushed update is enough): the
    dispatcher holds actions under that lock, so every hold is committed and seen here."""
    held = await queries.actions.held_actions(session, conversation_id, PAUSED)
    for action in held:
        identity = await queries.identities.get_identity(session, action.identity_id)
        action.queue = (
            queries.actions.parked_queue_of(identity, action.channel, action.type) or READY
        )
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


def _media(intent: ActionIntent) -> dict[str, str | None]:
    """What only some LinkedIn actions carry: kept out of the others' payloads."""
    return {"file": intent.file, "post": intent.post}


def _action_type(value: str) -> ActionType:
    if value not in CHANNEL_OF:
        raise ValueError(f"unknown action type {value!r}")
    return value  # type: ignore[return-value]
