"""The step executor: running one conversation step against the database and the world.

Each function here is what one Prefect task does (``tasks/`` only wraps them), written so it is
safe to run again after a crash at any line:

* the state change of step *n* commits only if the row is still at step *n* (a replay that finds
  step *n+1* returns the recorded cursor instead of acting twice);
* an outbound message is an intent row written in the step's transaction, before the provider
  call (``outbox``), so a replay finds it and reconciles instead of sending blind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from parley import outbox
from parley.campaign import Campaign, render_secrets
from parley.campaign.registry import start_node_of
from parley.campaign.templates import secret_names
from parley.channels.base import DeliveryStatus, OutboundMessage
from parley.db import queries
from parley.db.models import Conversation, Message, utcnow
from parley.errors import ChannelError, ParleyError, PermanentChannelError
from parley.outbox import SendDropped
from parley.retry import provider_may_retry, retrying
from parley.runtime import Runtime
from parley.state_machine import (
    TERMINAL,
    TRIGGER_STEP,
    Cursor,
    HttpCall,
    Reply,
    Snapshot,
    Status,
    Transition,
    Wait,
    WaitKind,
    after_http,
    plan_failure,
    plan_step,
    step_ref,
)

log = logging.getLogger(__name__)


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
        row.handed_over_at = None  # taken over: the dispatcher's handover watch ends here
        row.repair_after, row.repair_failures = None, 0
        queries.touch(row)
        return cursor_of(row)


async def run_step(rt: Runtime, conversation_id: int, step: int) -> Cursor:
    """Step ``step`` to its end: what a provider calls temporary is retried for
    ``rt.send_retry.budget_seconds`` (a 429's retry-after honoured), then the node has failed
    for good and the conversation takes its error path with the reason."""
    try:
        return await retrying(
            lambda: advance(rt, conversation_id, step),
            rt.send_retry,
            retryable=provider_may_retry,
            what=f"conversation {conversation_id} step {step}",
        )
    except ChannelError as exc:
        budget = rt.send_retry.budget_seconds
        reason = f"{type(exc).__name__} for {budget:.0f} s: {exc}"
        return await give_up(rt, conversation_id, step, reason)


async def advance(rt: Runtime, conversation_id: int, step: int) -> Cursor:
    """Run step ``step`` once: plan it, perform its one effect, commit step+1. A refusal that
    retrying cannot change ends the node for good (``give_up``); anything retryable raises."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.step != step or row.status in TERMINAL:
            return cursor_of(row)
        campaign = await rt.campaigns.get(session, row.campaign_version_id)
        snapshot = _snapshot(row)
        reply = await _next_reply(session, row)
        transition = plan_step(campaign, snapshot, reply, rt.environ)
        intent = await _record_intent(session, row, transition)
        contact = await queries.get_contact(session, row.contact_id)
    target = _Target(conversation_id, step, contact.address, contact.channel)
    try:
        transition = await _perform(rt, campaign, snapshot, transition, intent, target)
    except SendDropped:
        return await current_cursor(rt, conversation_id)  # it ended (cancelled) meanwhile
    except ChannelError as exc:
        if exc.retryable:
            raise
        return await give_up(rt, conversation_id, step, f"{type(exc).__name__}: {exc}")
    return await _commit(rt, conversation_id, step, transition)


async def current_cursor(rt: Runtime, conversation_id: int) -> Cursor:
    async with rt.db.read() as session:
        return cursor_of(await queries.get_conversation(session, conversation_id))


@dataclass(frozen=True)
class _Target:
    conversation_id: int
    step: int
    address: str
    channel: str


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
    target: _Target,
) -> Transition:
    if intent is not None and transition.outbound is not None:
        await outbox.deliver(rt, intent, transition.outbound, target.address, target.channel)
    if transition.http is not None:
        result = await _call_http(
            rt, transition.http, step_ref(target.conversation_id, target.step)
        )
        return after_http(campaign, snapshot, result)
    return transition


async def _call_http(rt: Runtime, call: HttpCall, ref: str) -> dict[str, Any]:
    """The idempotency key is the step's reference: a node visited twice, or the contact's next
    conversation, is a new call; a retry of this one is not. No contact data goes in headers."""
    parts = urlsplit(call.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PermanentChannelError(f"http node URL {call.url!r} is not an http(s) URL")
    headers = {name: await _with_secrets(rt, value) for name, value in call.headers.items()}
    return await rt.post_json(
        call.url, call.body, idempotency_key=ref, timeout=call.timeout_seconds, headers=headers
    )


async def _with_secrets(rt: Runtime, template: str) -> str:
    names = secret_names(template)
    if not names:
        return template
    values = {name: await rt.secrets(name) for name in dict.fromkeys(names)}
    return render_secrets(template, values)


async def _commit(rt: Runtime, conversation_id: int, step: int, t: Transition) -> Cursor:
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.step != step:
            return cursor_of(row)
        if t.consumed_message_id is not None:
            await queries.mark_consumed(session, t.consumed_message_id, step)
        _apply(row, step, t, rt.lease_seconds)
        successor = await _hand_over_unread(session, row) if t.status in TERMINAL else None
        return replace(cursor_of(row), successor=successor)


async def _hand_over_unread(session: AsyncSession, row: Conversation) -> int | None:
    """Messages stored while the conversation ran its last steps (the contact taps "Pro" and
    types "thanks" at once) go to the contact's next conversation, exactly as if they had
    arrived a moment later: the first starts it, the rest wait in its inbox. Same lock as the
    webhook's, so a message is either read here or finds no active conversation there."""
    await session.flush()  # the ended status must be visible to the active-pair index first
    unread = await queries.unread_inbound(session, row.id)
    if not unread:
        return None
    campaign = await queries.latest_campaign_version(
        session, (await queries.get_campaign_version(session, row.campaign_version_id)).name
    )
    successor, _created = await queries.create_conversation(
        session, row.identity_id, row.contact_id, campaign, start_node_of(campaign)
    )
    await queries.move_inbound(session, unread, successor.id, trigger_step=TRIGGER_STEP)
    log.info(
        "conversation %s ended with %d unread; handed to %s", row.id, len(unread), successor.id
    )
    return successor.id


async def cancel(rt: Runtime, conversation_id: int, reason: str) -> Cursor:
    """End a conversation from outside (the Prefect UI, an operator): nothing more is sent —
    its intents that have not gone out are dropped."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.status not in TERMINAL:
            _end(row, Status.CANCELLED, reason)
            await queries.drop_unsent(session, row.id, f"conversation cancelled: {reason}")
        return cursor_of(row)


async def mark_failed(rt: Runtime, conversation_id: int, reason: str) -> Cursor:
    """The dispatcher gave up recovering the conversation's run: say so on the row."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.status not in TERMINAL:
            _end(row, Status.FAILED, reason)
            await queries.drop_unsent(session, row.id, f"conversation failed: {reason}")
        return cursor_of(row)


def _end(row: Conversation, status: Status, reason: str) -> None:
    row.status = status
    row.last_error = reason[:2000]
    row.ended_at = utcnow()
    row.lease_until = None
    row.handed_over_at = None
    queries.touch(row)


def _apply(row: Conversation, step: int, t: Transition, lease_seconds: float) -> None:
    """Write step ``step``'s transition into the (locked) row."""
    if t.wait and (row.waiting_for != t.wait.kind or row.current_node != t.current_node):
        row.waiting_since = utcnow()
    row.current_node = t.current_node
    row.variables = t.variables
    row.attempts = t.attempts
    row.waiting_for = t.wait.kind if t.wait else None
    row.wake_at = t.wait.until if t.wait else None
    row.status = t.status
    row.step = step + 1
    if t.error is not None:
        row.last_error = t.error[:2000]
    if t.status in TERMINAL:
        row.ended_at = utcnow()
        row.lease_until = None
    else:
        extend_lease(row, lease_seconds)
    queries.touch(row)


async def give_up(rt: Runtime, conversation_id: int, step: int, reason: str) -> Cursor:
    """Step ``step`` failed for good. Follow the node's ``when: error`` edge, or end the
    conversation ``failed`` with the reason, first telling the contact the campaign's
    ``error_text``. The apology's intent is written with the state change; a replay of this
    function delivers it if the previous attempt died before it went out."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.step == step and row.status not in TERMINAL:
            campaign = await rt.campaigns.get(session, row.campaign_version_id)
            transition = plan_failure(campaign, _snapshot(row), reason, rt.environ)
            if transition.outbound is not None:
                await outbox.record_intent(
                    session, row.id, step, apology_ref(row.id, step), transition.outbound
                )
            _apply(row, step, transition, rt.lease_seconds)
        cursor = cursor_of(row)
        apology = await queries.outbound_by_ref(session, apology_ref(conversation_id, step))
        contact = await queries.get_contact(session, row.contact_id)
    if apology is not None and apology.status == DeliveryStatus.PENDING:
        await _send_apology(rt, apology, contact.address, contact.channel)
    return cursor


def apology_ref(conversation_id: int, step: int) -> str:
    return f"{step_ref(conversation_id, step)}-error"


async def _send_apology(rt: Runtime, intent: Message, to: str, channel: str) -> None:
    """Best effort: the conversation has already ended; a provider refusing the apology too
    is recorded on the message, not raised."""
    message = OutboundMessage(intent.text or "")
    try:
        await outbox.deliver(rt, intent, message, to, channel)
    except ChannelError as exc:
        log.warning("apology %s not sent: %s", intent.client_ref, exc)
