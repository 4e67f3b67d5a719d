"""The step executor: running one conversation step against the database and the world.

Each function here is what one Prefect task does (``tasks/`` only wraps them), written so it is
safe to run again after a crash at any line:

* the state change of step *n* commits only if the row is still at step *n* (a replay that finds
  step *n+1* returns the recorded cursor instead of acting twice);
* an outbound message is an intent row written in the step's transaction, before the provider
  call (``outbox``), so a replay finds it and reconciles instead of sending blind.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from parley import outbox
from parley.campaign import Campaign
from parley.db import queries
from parley.db.models import Conversation, Message, utcnow
from parley.errors import ChannelError, ParleyError
from parley.runtime import Runtime
from parley.state_machine import (
    TERMINAL,
    Cursor,
    Reply,
    Snapshot,
    Status,
    Transition,
    Wait,
    WaitKind,
    after_http,
    plan_step,
    step_ref,
)


class NothingToConsume(ParleyError):
    """A reply step ran with an empty inbox; the flow only calls it when a message is there."""


def wait_of(row: Conversation) -> Wait | None:
    if row.waiting_for is None:
        return None
    return Wait(WaitKind(row.waiting_for), row.wake_at)


def cursor_of(row: Conversation) -> Cursor:
    return Cursor(row.id, row.step, Status(row.status), row.current_node, wait_of(row))


def extend_lease(row: Conversation, seconds: float) -> None:
    row.lease_until = utcnow() + timedelta(seconds=seconds)


async def begin_run(rt: Runtime, conversation_id: int, flow_run_id: str | None) -> Cursor:
    """A run (new, resumed or rescheduled after a crash) takes the conversation over."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.status in TERMINAL:
            return cursor_of(row)
        row.status = Status.RUNNING
        if flow_run_id:
            row.flow_run_id = flow_run_id
        extend_lease(row, rt.lease_seconds)
        queries.touch(row)
        return cursor_of(row)


async def advance(rt: Runtime, conversation_id: int, step: int) -> Cursor:
    """Run step ``step``: plan it, perform its one effect, commit step+1."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.step != step or row.status in TERMINAL:
            return cursor_of(row)
        campaign = await rt.campaigns.get(session, row.campaign_version_id)
        snapshot = _snapshot(row)
        reply = await _next_reply(session, row)
        transition = plan_step(campaign, snapshot, reply)
        intent = await _record_intent(session, row, transition)
        contact = await queries.get_contact(session, row.contact_id)
    try:
        transition = await _perform(
            rt, campaign, snapshot, transition, intent, contact.address, contact.channel
        )
    except ChannelError as exc:
        if exc.retryable:
            raise
        return await fail(rt, conversation_id, f"{type(exc).__name__}: {exc}")
    return await _commit(rt, conversation_id, step, transition)


def _snapshot(row: Conversation) -> Snapshot:
    return Snapshot(row.current_node, dict(row.variables), row.attempts, wait_of(row))


async def _next_reply(session: AsyncSession, row: Conversation) -> Reply | None:
    if row.waiting_for != WaitKind.REPLY:
        return None
    message = await queries.first_unconsumed_inbound(session, row.id)
    if message is None:
        raise NothingToConsume(f"conversation {row.id} step {row.step} has no reply to consume")
    return Reply(message.id, message.text, message.reply_id)


async def _record_intent(session: AsyncSession, row: Conversation, t: Transition) -> Message | None:
    if t.outbound is None:
        return None
    return await outbox.record_intent(
        session, row.id, row.step, step_ref(row.id, row.step), t.outbound
    )


async def _perform(
    rt: Runtime,
    campaign: Campaign,
    snapshot: Snapshot,
    transition: Transition,
    intent: Message | None,
    to: str,
    channel: str,
) -> Transition:
    if intent is not None and transition.outbound is not None:
        await outbox.deliver(rt, intent, transition.outbound, to, channel)
    if transition.http is not None:
        call = transition.http
        result = await rt.post_json(
            call.url,
            call.body,
            idempotency_key=intent.client_ref if intent else f"{to}-{snapshot.current_node}",
            timeout=call.timeout_seconds,
        )
        return after_http(campaign, snapshot, result)
    return transition


async def _commit(rt: Runtime, conversation_id: int, step: int, t: Transition) -> Cursor:
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.step != step:
            return cursor_of(row)
        if t.consumed_message_id is not None:
            await queries.mark_consumed(session, t.consumed_message_id, step)
        if t.wait and (row.waiting_for != t.wait.kind or row.current_node != t.current_node):
            row.waiting_since = utcnow()
        row.current_node = t.current_node
        row.variables = t.variables
        row.attempts = t.attempts
        row.waiting_for = t.wait.kind if t.wait else None
        row.wake_at = t.wait.until if t.wait else None
        row.status = t.status
        row.step = step + 1
        if t.status in TERMINAL:
            row.ended_at = utcnow()
            row.lease_until = None
        else:
            extend_lease(row, rt.lease_seconds)
        queries.touch(row)
        return cursor_of(row)


async def fail(rt: Runtime, conversation_id: int, reason: str) -> Cursor:
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.status not in TERMINAL:
            row.status = Status.FAILED
            row.last_error = reason[:2000]
            row.ended_at = utcnow()
            row.lease_until = None
            queries.touch(row)
        return cursor_of(row)
