"""Executing conversation steps against the database and the outside world.

Each function here is what one Prefect task does (``tasks/`` only wraps them), written so it is
safe to run again after a crash at any line:

* the state change of step *n* commits only if the row is still at step *n* (a replay that finds
  step *n+1* returns the recorded cursor instead of acting twice);
* an outbound message is an intent row (``client_ref = conv-{id}-step-{n}``) written before the
  provider call, so a replay finds it and reconciles instead of sending blind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign import Campaign
from parley.campaign.registry import CampaignCache
from parley.conversation import (
    TERMINAL,
    WAITING_FOR_REPLY,
    Cursor,
    Outbound,
    Reply,
    Snapshot,
    Transition,
    after_http,
    plan_step,
)
from parley.db import Database, queries
from parley.db.models import Conversation, Message, utcnow
from parley.errors import ChannelError, ParleyError
from parley.notify import InboxSignal, PollingSignal

log = logging.getLogger(__name__)

SENT_STATUSES = frozenset({"sent", "delivered", "read"})


class Sender(Protocol):
    async def send(self, to: str, outbound: Outbound, *, client_ref: str) -> str: ...


HttpPoster = Callable[..., Awaitable[dict[str, Any]]]


class NothingToConsume(ParleyError):
    """A reply step ran with an empty inbox; the flow only calls it when a message is there."""


@dataclass
class StepRuntime:
    """Everything a step needs from the outside, built once per worker process."""

    db: Database
    sender: Sender
    post_json: HttpPoster
    campaigns: CampaignCache
    lease_seconds: float = 30.0
    reconcile_seconds: float = 30.0
    poll_seconds: float = 0.05
    inbox_signal: InboxSignal | None = None
    # Set when the worker shuts down: hot waits end early so their runs suspend (and cost
    # nothing) instead of dying with the process and waiting for lease expiry.
    stop_waiting: bool = False

    @property
    def signal(self) -> InboxSignal:
        return self.inbox_signal or PollingSignal(self.poll_seconds)


@dataclass(frozen=True)
class SuspendDecision:
    suspend: bool
    key: str


def step_ref(conversation_id: int, step: int) -> str:
    """Our id for step ``n``'s side effect; Prefect cache key and provider reference derive
    from it. Only lowercase letters, digits and dashes: it also names suspend keys."""
    return f"conv-{conversation_id}-step-{step}"


def cursor_of(row: Conversation) -> Cursor:
    return Cursor(row.id, row.step, row.status, row.waiting_for)


def _renew_lease(row: Conversation, seconds: float) -> None:
    row.lease_until = utcnow() + timedelta(seconds=seconds)


async def begin_run(rt: StepRuntime, conversation_id: int, flow_run_id: str | None) -> Cursor:
    """A run (new, resumed or rescheduled after a crash) takes the conversation over."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.status in TERMINAL:
            return cursor_of(row)
        row.status = "running"
        if flow_run_id:
            row.flow_run_id = flow_run_id
        _renew_lease(row, rt.lease_seconds)
        queries.touch(row)
        return cursor_of(row)


async def advance(rt: StepRuntime, conversation_id: int, step: int) -> Cursor:
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
        transition = await _perform(rt, campaign, snapshot, transition, intent, contact.address)
    except ChannelError as exc:
        if exc.retryable:
            raise
        return await fail(rt, conversation_id, f"{type(exc).__name__}: {exc}")
    return await _commit(rt, conversation_id, step, transition)


def _snapshot(row: Conversation) -> Snapshot:
    return Snapshot(row.current_node, dict(row.variables), row.attempts, row.waiting_for)


async def _next_reply(session: AsyncSession, row: Conversation) -> Reply | None:
    if row.waiting_for != WAITING_FOR_REPLY:
        return None
    message = await queries.first_unconsumed_inbound(session, row.id)
    if message is None:
        raise NothingToConsume(f"conversation {row.id} step {row.step} has no reply to consume")
    return Reply(message.id, message.text, message.reply_id)


async def _record_intent(session: AsyncSession, row: Conversation, t: Transition) -> Message | None:
    if t.outbound is None:
        return None
    return await queries.ensure_outbound_intent(
        session,
        conversation_id=row.id,
        step=row.step,
        client_ref=step_ref(row.id, row.step),
        text=t.outbound.text,
        payload=t.outbound.payload(),
    )


async def _perform(
    rt: StepRuntime,
    campaign: Campaign,
    snapshot: Snapshot,
    transition: Transition,
    intent: Message | None,
    to: str,
) -> Transition:
    if intent is not None and transition.outbound is not None:
        await deliver(rt, intent, transition.outbound, to)
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


async def _commit(rt: StepRuntime, conversation_id: int, step: int, t: Transition) -> Cursor:
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.step != step:
            return cursor_of(row)
        if t.consumed_message_id is not None:
            await queries.mark_consumed(session, t.consumed_message_id, step)
        if t.waiting_for and (
            row.waiting_for != t.waiting_for or row.current_node != t.current_node
        ):
            row.waiting_since = utcnow()
        row.current_node = t.current_node
        row.variables = t.variables
        row.attempts = t.attempts
        row.waiting_for = t.waiting_for
        row.status = t.status
        row.step = step + 1
        if t.status in TERMINAL:
            row.ended_at = utcnow()
            row.lease_until = None
        else:
            _renew_lease(row, rt.lease_seconds)
        queries.touch(row)
        return cursor_of(row)


async def fail(rt: StepRuntime, conversation_id: int, reason: str) -> Cursor:
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.status not in TERMINAL:
            row.status = "failed"
            row.last_error = reason[:2000]
            row.ended_at = utcnow()
            row.lease_until = None
            queries.touch(row)
        return cursor_of(row)


# --- sending with intent, and reconciling uncertain sends --------------------------------------


async def deliver(rt: StepRuntime, intent: Message, outbound: Outbound, to: str) -> None:
    """Send ``outbound`` at most once per intent row (DESIGN rule 4)."""
    ref = intent.client_ref
    assert ref is not None
    if intent.status in SENT_STATUSES:
        return
    if intent.status == "sending" and await _reconciled(rt, ref):
        return
    await _set_status(rt, ref, "sending")
    try:
        provider_id = await rt.sender.send(to, outbound, client_ref=ref)
    except ChannelError as exc:
        await _record_failure(rt, ref, exc)
        raise
    await _set_status(rt, ref, "sent", provider_message_id=provider_id)


async def _reconciled(rt: StepRuntime, client_ref: str) -> bool:
    """A previous attempt crashed after the provider call may have gone out. Wait for the
    provider's status callback (it carries our ref) before deciding it did not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + rt.reconcile_seconds
    while True:
        async with rt.db.read() as session:
            row = await queries.outbound_by_ref(session, client_ref)
        if row is not None and row.status in SENT_STATUSES:
            log.info("send %s reconciled from the provider's status callback", client_ref)
            return True
        if loop.time() >= deadline:
            log.warning(
                "send %s stayed uncertain for %ss; sending again", client_ref, rt.reconcile_seconds
            )
            return False
        await asyncio.sleep(max(rt.poll_seconds, 0.2))


async def _set_status(
    rt: StepRuntime,
    client_ref: str,
    status: str,
    *,
    provider_message_id: str | None = None,
    error: str | None = None,
) -> None:
    async with rt.db.transaction() as session:
        row = await queries.outbound_by_ref(session, client_ref)
        assert row is not None
        await queries.set_outbound_status(
            session, row, status, provider_message_id=provider_message_id, error=error
        )


async def _record_failure(rt: StepRuntime, client_ref: str, exc: ChannelError) -> None:
    """A refusal with an HTTP answer is known not sent; a timeout may have gone out, so the
    intent stays ``sending`` and the retry reconciles first."""
    if exc.retryable and exc.http_status is None:
        return
    status = "pending" if exc.retryable else "failed"
    await _set_status(rt, client_ref, status, error=f"{type(exc).__name__}: {exc}")


# --- waiting: hot, then suspended --------------------------------------------------------------


async def wait_hot(rt: StepRuntime, conversation_id: int, step: int, seconds: float) -> bool:
    """Stay in-process for up to ``seconds`` waiting for the next message (a live chat answers
    in milliseconds); False means nothing came and the run may go cold."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.step != step or row.status in TERMINAL:
            return True
        if await queries.has_unconsumed_inbound(session, conversation_id):
            return True
        row.status = "hot"
        _renew_lease(row, rt.lease_seconds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    renew_at = loop.time() + rt.lease_seconds / 3
    while loop.time() < deadline and not rt.stop_waiting:
        await rt.signal.wait(conversation_id, min(deadline - loop.time(), 1.0))
        async with rt.db.read() as session:
            if await queries.has_unconsumed_inbound(session, conversation_id):
                return True
        if loop.time() >= renew_at:
            await renew_lease(rt, conversation_id)
            renew_at = loop.time() + rt.lease_seconds / 3
    return False


async def renew_lease(rt: StepRuntime, conversation_id: int) -> None:
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.status in ("running", "hot"):
            _renew_lease(row, rt.lease_seconds)


async def prepare_suspend(rt: StepRuntime, conversation_id: int, step: int) -> SuspendDecision:
    """The flow's half of the no-lost-wake-up handshake: under the row lock, either a message
    is already there (keep going) or the row says ``suspended`` before the run suspends, so a
    webhook storing a message after this commit knows it must resume the run."""
    async with rt.db.transaction() as session:
        row = await queries.lock_conversation(session, conversation_id)
        if row.step != step or row.status in TERMINAL:
            return SuspendDecision(False, "")
        if await queries.has_unconsumed_inbound(session, conversation_id):
            row.status = "running"
            return SuspendDecision(False, "")
        row.status = "suspended"
        row.sleeps += 1
        row.lease_until = None
        queries.touch(row)
        return SuspendDecision(True, f"wait-{step}-{row.sleeps}")
