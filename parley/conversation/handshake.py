"""Both halves of the wait handshake: no conversation sleeps through its own wake-up.

The flow's half: after a prompt it waits hot in-process for a while (``wait_hot``), then, under
the conversation row lock, either finds a message already there or writes ``suspended`` before
it suspends (``prepare_suspend``). The webhook's half: it stores a message under the same lock
and reads the status in that transaction (``wakeup_for``): a suspended run needs a resume, a
new conversation a flow run, a running or hot one will see the message by itself. The
dispatcher's half is the same for an outreach action's outcome (``dispatch._deliver_outcome``):
it records the outcome under the lock and resumes a run the row says is suspended; a running
one finds the outcome here, before it would suspend.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from parley.conversation import row as conversation_row
from parley.conversation.state_machine import suspend_key
from parley.db import queries
from parley.db.models import Conversation
from parley.inbox_signal import Subscription
from parley.runtime import Runtime
from parley.vocabulary import LIVE, TERMINAL, Status, WaitKind

WakeAction = Literal["start", "resume"]


@dataclass(frozen=True)
class WakeUp:
    """What the webhook must do for a conversation once its message is committed."""

    conversation_id: int
    action: WakeAction
    flow_run_id: str | None


@dataclass(frozen=True)
class SuspendDecision:
    suspend: bool
    key: str


def wakeup_for(conversation: Conversation, created: bool) -> WakeUp | None:
    """The webhook's half, read under the row lock in the storing transaction."""
    if created or (conversation.status == Status.PENDING and conversation.flow_run_id is None):
        return WakeUp(conversation.id, "start", None)
    if conversation.status == Status.SUSPENDED:
        return WakeUp(conversation.id, "resume", conversation.flow_run_id)
    return None


async def wait_hot(rt: Runtime, conversation_id: int, step: int, seconds: float) -> bool:
    """Stay in-process for up to ``seconds`` waiting for the next message (a live chat answers
    in milliseconds), never past the wait's own deadline; True also when an operator paused
    or ended the conversation meanwhile. False means nothing came and the run may go cold.
    Subscribed before the first look: a message is either seen by that look or notified."""
    async with rt.signal.subscribe(conversation_id) as inbox:
        async with rt.db.transaction() as session:
            row = await queries.conversations.lock_conversation(session, conversation_id)
            if row.step != step or row.status in TERMINAL or row.status is Status.PAUSED:
                return True
            if await queries.messages.has_unconsumed_inbound(session, conversation_id):
                return True
            if row.wake_at is not None:
                seconds = min(seconds, (row.wake_at - rt.clock.now()).total_seconds())
            conversation_row.mark_hot(row, rt.lease_seconds)
        return await _until_told(rt, conversation_id, inbox, seconds)


async def _until_told(
    rt: Runtime, conversation_id: int, inbox: Subscription, seconds: float
) -> bool:
    """A message stored between two looks still wakes us (the subscription keeps it); between
    notifications the inbox is read every ``recheck_seconds`` (an operator's pause or a
    graceful stop is seen then) and at each renewal of the lease."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    renew_at = loop.time() + rt.lease_seconds / 3
    while loop.time() < deadline and not rt.stopping:
        until_next_look = min(deadline, renew_at) - loop.time()
        await inbox.wait(max(0.0, min(until_next_look, inbox.recheck_seconds)))
        async with rt.db.read() as session:
            if await queries.messages.has_unconsumed_inbound(session, conversation_id):
                return True
            if (
                await queries.conversations.get_conversation(session, conversation_id)
            ).status is not Status.HOT:
                return True  # paused, cancelled or completed from outside
        if loop.time() >= renew_at:
            await renew_lease(rt, conversation_id)
            renew_at = loop.time() + rt.lease_seconds / 3
    return False


async def renew_lease(rt: Runtime, conversation_id: int) -> None:
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.status in LIVE:
            conversation_row.renew_lease(row, rt.lease_seconds)


async def prepare_suspend(rt: Runtime, conversation_id: int, step: int) -> SuspendDecision:
    """The flow's half, under the row lock: either a message is already there (keep going) or
    the row says ``suspended`` before the run suspends, so a webhook storing a message after
    this commit knows it must resume the run."""
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.step != step or row.status in TERMINAL:
            return SuspendDecision(False, "")
        if row.status is not Status.PAUSED and (
            await queries.messages.has_unconsumed_inbound(session, conversation_id)
            or _due(rt, row)
            or _action_settled(row)
        ):
            conversation_row.keep_going(row)
            return SuspendDecision(False, "")
        return SuspendDecision(True, suspend_key(step, conversation_row.suspend(row)))


def _due(rt: Runtime, row: Conversation) -> bool:
    return row.wake_at is not None and row.wake_at <= rt.clock.now()


def _action_settled(row: Conversation) -> bool:
    """The outreach action it waits for has its outcome already (the dispatcher's half of
    this handshake: ``dispatch._deliver_outcome`` reads the status under the same lock and
    resumes a run that says ``suspended``)."""
    return row.waiting_for == WaitKind.ACTION and row.task_result is not None
