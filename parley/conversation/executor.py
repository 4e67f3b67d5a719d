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
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign import Campaign, render_secrets
from parley.campaign.conditions import LeadFacts
from parley.campaign.registry import start_node_of
from parley.campaign.templates import secret_names
from parley.channels.base import OutboundMessage, SenderIdentity
from parley.conversation import handoff, lead_import, outbox, whatsapp_numbers
from parley.conversation import row as conversation_row
from parley.conversation.outbox import SendDropped, SendSuperseded
from parley.conversation.planner import after_http, plan_failure, plan_step
from parley.conversation.state_machine import (
    Cursor,
    HttpCall,
    Reply,
    Snapshot,
    Transition,
    Wait,
)
from parley.db import queries
from parley.db.models import Contact, Conversation, Message
from parley.errors import ChannelError, PermanentChannelError
from parley.retry import provider_may_retry, retrying
from parley.runtime import Runtime
from parley.vocabulary import TERMINAL, TRIGGER_STEP, DeliveryStatus, Status, WaitKind, step_ref

log = logging.getLogger(__name__)


def wait_of(row: Conversation) -> Wait | None:
    if row.waiting_for is None:
        return None
    return Wait(WaitKind(row.waiting_for), row.wake_at)


def cursor_of(row: Conversation) -> Cursor:
    return Cursor(row.id, row.step, Status(row.status), row.current_node, wait_of(row))


async def begin_run(rt: Runtime, conversation_id: int, flow_run_id: str | None) -> Cursor:
    """A run (new, resumed or rescheduled after a crash) takes the conversation over. A paused
    one stays paused: the run only comes to suspend again until someone resumes it."""
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.status in TERMINAL:
            conversation_row.clear_wake(row)  # it ended from outside: the run only finishes
            return cursor_of(row)
        now = rt.clock.now()
        if conversation_row.take_over(row, flow_run_id, rt.lease_seconds, now):
            await queries.visits.open_visit(session, row, row.current_node, now)
        return cursor_of(row)


async def run_step(rt: Runtime, conversation_id: int, step: int) -> Cursor:
    """Step ``step`` to its end: what a provider calls temporary is retried for
    ``rt.send_retry.budget_seconds`` (a 429's retry-after honoured), then the node has failed
    for good and the conversation takes its error path with the reason."""
    at = [step]  # the step with the effect: quiet steps before it are committed by then

    async def attempt() -> Cursor:
        planned = await plan(rt, conversation_id, at[0])
        if isinstance(planned, Cursor):
            return planned
        at[0] = planned.step
        return await perform(rt, planned)

    try:
        return await retrying(
            attempt,
            rt.send_retry,
            retryable=provider_may_retry,
            what=f"conversation {conversation_id} step {step}",
        )
    except ChannelError as exc:
        budget = rt.send_retry.budget_seconds
        reason = f"{type(exc).__name__} for {budget:.0f} s: {exc}"
        return await give_up(rt, conversation_id, at[0], reason)


async def advance(rt: Runtime, conversation_id: int, step: int) -> Cursor:
    """Run step ``step`` once: plan it, perform its one effect, commit step+1. A refusal that
    retrying cannot change ends the node for good (``give_up``); anything retryable raises."""
    planned = await plan(rt, conversation_id, step)
    if isinstance(planned, Cursor):
        return planned
    return await perform(rt, planned)


QUIET_STEPS_PER_PLAN = 20
"""A bound on quiet steps chained in one plan (a graph of branches that loops without waiting
moves on one task at a time beyond it, as it always did)."""


def _quiet(t: Transition) -> bool:
    """A step that only moves to the next node (an answer taken, a branch, a set): nothing to
    perform, so it commits in the planning transaction and the next node is planned at once."""
    return (
        t.entered
        and t.status is Status.RUNNING
        and t.wait is None
        and t.outbound is None
        and t.http is None
        and t.action is None
    )


@dataclass(frozen=True)
class PlannedStep:
    """A step decided and its intent recorded (committed), its effect not yet performed."""

    conversation_id: int
    step: int
    campaign: Campaign
    snapshot: Snapshot
    transition: Transition
    intent: Message | None
    address: str
    channel: str
    sender: SenderIdentity | None = None  # the identity's own account, where it has one


async def plan(rt: Runtime, conversation_id: int, step: int) -> PlannedStep | Cursor:
    """The first half of a step, in one transaction: the pause gate (a paused conversation or
    campaign stops here), then the plan and its send intent. A cursor means nothing to do."""
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.step != step or row.status in TERMINAL:
            return cursor_of(row)
        if row.status is Status.PAUSED or await _campaign_paused(session, row):
            # A step of its own: the cached result of step n must not say "paused" to the run
            # that is resumed later and asks for step n again.
            conversation_row.step_held(row)
            return cursor_of(row)
        campaign = await rt.campaigns.get(session, row.campaign_version_id)
        contact = await queries.contacts.get_contact(session, row.contact_id)
        for _ in range(QUIET_STEPS_PER_PLAN):
            now = rt.clock.now()
            snapshot = await _snapshot(session, row, contact, campaign, now)
            transition = plan_step(campaign, snapshot, await _next_reply(session, row), rt.environ)
            if not _quiet(transition):
                break
            await _commit_locked(session, row, row.step, transition, rt.lease_seconds, now)
        intent = await _record_intent(session, row, transition)
        sender = await _sender(session, row, contact) if intent is not None else None
    return PlannedStep(
        conversation_id,
        row.step,
        campaign,
        snapshot,
        transition,
        intent,
        contact.address,
        contact.channel,
        sender,
    )


async def _sender(
    session: AsyncSession, row: Conversation, contact: Contact
) -> SenderIdentity | None:
    """A WhatsApp message goes out from the conversation identity's own number (an outreach
    identity's, not only the installation's): the contact answers the number that wrote."""
    if contact.channel != whatsapp_numbers.WHATSAPP:
        return None
    return whatsapp_numbers.whatsapp_sender(
        await queries.identities.get_identity(session, row.identity_id)
    )


async def perform(rt: Runtime, planned: PlannedStep) -> Cursor:
    """The second half: the one effect (send, call), then step+1 committed. A follow-up whose
    contact wrote before it went out is not sent: the step ends without it and the next one
    reads the message."""
    conversation_id, step = planned.conversation_id, planned.step
    try:
        transition = await _perform(rt, planned)
    except SendSuperseded:
        return await _commit(rt, conversation_id, step, _unchanged(planned.snapshot))
    except SendDropped:
        return await current_cursor(rt, conversation_id)  # it ended (cancelled) meanwhile
    except ChannelError as exc:
        if exc.retryable:
            raise
        return await give_up(rt, conversation_id, step, f"{type(exc).__name__}: {exc}")
    return await _commit(rt, conversation_id, step, transition)


def _unchanged(s: Snapshot) -> Transition:
    return Transition(
        s.current_node,
        dict(s.variables),
        s.attempts,
        s.wait,
        Status.RUNNING,
        node_done=s.node_done,
        follow_up=s.follow_up,
        task_result=s.task_result,
    )


async def _campaign_paused(session: AsyncSession, row: Conversation) -> bool:
    """The pause gate's second half: a paused or draft campaign holds each conversation at
    its next node (a draft's from its first); ``paused_by`` says the campaign's resume may
    release it (an operator's may not)."""
    if not await queries.campaigns.campaign_held(session, row.campaign_version_id):
        return False
    conversation_row.pause(row, by="campaign")
    return True


async def current_cursor(rt: Runtime, conversation_id: int) -> Cursor:
    async with rt.db.read() as session:
        return cursor_of(await queries.conversations.get_conversation(session, conversation_id))


async def _snapshot(
    session: AsyncSession,
    row: Conversation,
    contact: Contact,
    campaign: Campaign,
    now: datetime,
) -> Snapshot:
    heard = (
        await queries.messages.last_heard_at(session, row.id)
        if campaign.inactivity_timeout
        else None
    )
    return Snapshot(
        row.current_node,
        dict(row.variables),
        row.attempts,
        wait_of(row),
        node_done=row.node_done,
        entered_at=row.node_entered_at or row.created_at,
        now=now,
        follow_up=row.follow_up,
        task_result=row.task_result,
        contact=contact.fields,
        last_heard_at=heard,
        lead=await _lead_facts(session, row, contact, campaign),
    )


async def _lead_facts(
    session: AsyncSession, row: Conversation, contact: Contact, campaign: Campaign
) -> LeadFacts:
    """What the lead conditions need beyond the contact's fields; the look-up across the
    installation's conversations only for a campaign that asks ``not_already_contacted``, at
    every step, so the answer is as of the moment the edge is judged."""
    last = None
    if campaign.asks_contact_history:
        same_lead = await queries.leads.lead_contact_ids(session, contact)
        last = await queries.leads.last_contacted_at(session, same_lead, row.id)
    return LeadFacts(contact.channel, contact.address, last)


async def _next_reply(session: AsyncSession, row: Conversation) -> Reply | None:
    message = await queries.messages.first_unconsumed_inbound(session, row.id)
    return None if message is None else Reply(message.id, message.text, message.reply_id)


async def _record_intent(session: AsyncSession, row: Conversation, t: Transition) -> Message | None:
    if t.outbound is None:
        return None
    return await outbox.record_intent(
        session, row.id, row.step, step_ref(row.id, row.step), t.outbound
    )


async def _perform(rt: Runtime, p: PlannedStep) -> Transition:
    t = p.transition
    if p.intent is not None and t.outbound is not None:
        # A follow-up is dropped if the contact wrote first — unless this very step reads what
        # they wrote (an answer's retry prompt answers the message, it is no follow-up).
        reads_it = t.consumed_message_id is not None
        guard = p.conversation_id if p.snapshot.follow_up and not reads_it else None
        await outbox.deliver(
            rt, p.intent, t.outbound, p.address, p.channel, unless_replied=guard, sender=p.sender
        )
    if t.http is not None:
        result = await _call_http(rt, t.http, step_ref(p.conversation_id, p.step))
        return after_http(p.campaign, p.snapshot, result, rt.environ)
    return t


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
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.step != step:
            return cursor_of(row)
        await _commit_locked(session, row, step, t, rt.lease_seconds, rt.clock.now())
        successor = await _hand_over_unread(session, row) if t.status in TERMINAL else None
        return replace(cursor_of(row), successor=successor)


async def _commit_locked(
    session: AsyncSession,
    row: Conversation,
    step: int,
    t: Transition,
    lease_seconds: float,
    now: datetime,
) -> None:
    """Step ``step``'s transition written into the locked row: step+1 from here."""
    if t.consumed_message_id is not None:
        await queries.messages.mark_consumed(session, t.consumed_message_id, step)
    if t.action is not None:  # queued in the same transaction as the state change
        contact = await queries.contacts.get_contact(session, row.contact_id)
        await handoff.enqueue(session, row, contact, t.action, step, now)
        conversation_row.expect_action(row, step)
    await _record_visit(session, row, t, now)
    conversation_row.step_taken(row, step, t, lease_seconds, now)
    if t.placement is not None:  # in the step's transaction: a replay finds it done
        outcome = await lead_import.place_from_conversation(session, row, t.placement, step)
        conversation_row.placed(row, outcome)


async def _hand_over_unread(session: AsyncSession, row: Conversation) -> int | None:
    """Messages stored while the conversation ran its last steps (the contact taps "Pro" and
    types "thanks" at once) go to the contact's next conversation, exactly as if they had
    arrived a moment later: the first starts it, the rest wait in its inbox. Same lock as the
    webhook's, so a message is either read here or finds no active conversation there."""
    await session.flush()  # the ended status must be visible to the active-pair index first
    unread = await queries.messages.unread_inbound(session, row.id)
    if not unread:
        return None
    campaign = await queries.campaigns.latest_campaign_version(
        session,
        (await queries.campaigns.get_campaign_version(session, row.campaign_version_id)).name,
    )
    successor, _created = await queries.conversations.create_conversation(
        session, row.identity_id, row.contact_id, campaign, start_node_of(campaign)
    )
    await queries.messages.move_inbound(session, unread, successor.id, trigger_step=TRIGGER_STEP)
    log.info(
        "conversation %s ended with %d unread; handed to %s", row.id, len(unread), successor.id
    )
    return successor.id


async def mark_cancelled(rt: Runtime, conversation_id: int, reason: str) -> Cursor:
    """Its run was cancelled (in the Prefect UI): the row says cancelled and nothing more is
    sent — its intents that have not gone out are dropped. (An operator's command is
    ``lifecycle.cancel``.)"""
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.status not in TERMINAL:
            await end_from_outside(session, row, Status.CANCELLED, reason, rt.clock.now())
        return cursor_of(row)


async def mark_failed(rt: Runtime, conversation_id: int, reason: str) -> Cursor:
    """The dispatcher gave up recovering the conversation's run: say so on the row."""
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.status not in TERMINAL:
            await end_from_outside(session, row, Status.FAILED, reason, rt.clock.now())
        return cursor_of(row)


async def end_from_outside(
    session: AsyncSession, row: Conversation, status: Status, reason: str, now: datetime
) -> None:
    """End the (locked) conversation from outside its run: its unsent intents (and the actions
    held while it was paused) are dropped, never sent later, and its node visit closed with how
    it ended."""
    conversation_row.end(row, status, reason)
    await queries.messages.drop_unsent(session, row.id, f"conversation {status.value}: {reason}")
    await handoff.skip_held(session, row.id, f"conversation {status.value}: {reason}")
    await queries.visits.close_visit(session, row.id, at=now, outcome=status.value, error=reason)


async def _record_visit(
    session: AsyncSession, row: Conversation, t: Transition, now: datetime
) -> None:
    """Close the node's visit when the conversation leaves it or ends there; open the next."""
    if t.entered:
        await queries.visits.close_visit(
            session,
            row.id,
            at=now,
            outcome="left",
            next_node=t.current_node,
            attempts=row.attempts,
            error=t.error,
        )
        await queries.visits.open_visit(session, row, t.current_node, now)
    elif t.status in TERMINAL:
        await queries.visits.close_visit(
            session, row.id, at=now, outcome=t.status.value, attempts=t.attempts, error=t.error
        )


async def give_up(rt: Runtime, conversation_id: int, step: int, reason: str) -> Cursor:
    """Step ``step`` failed for good. Follow the node's ``when: error`` edge, or end the
    conversation ``failed`` with the reason, first telling the contact the campaign's
    ``error_text``. The apology's intent is written with the state change; a replay of this
    function delivers it if the previous attempt died before it went out."""
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.step == step and row.status not in TERMINAL:
            campaign = await rt.campaigns.get(session, row.campaign_version_id)
            contact = await queries.contacts.get_contact(session, row.contact_id)
            snapshot = await _snapshot(session, row, contact, campaign, rt.clock.now())
            transition = plan_failure(campaign, snapshot, reason, rt.environ)
            if transition.outbound is not None:
                await outbox.record_intent(
                    session, row.id, step, apology_ref(row.id, step), transition.outbound
                )
            await _record_visit(session, row, transition, rt.clock.now())
            conversation_row.step_taken(row, step, transition, rt.lease_seconds, rt.clock.now())
        cursor = cursor_of(row)
        apology = await queries.messages.outbound_by_ref(
            session, apology_ref(conversation_id, step)
        )
        contact = await queries.contacts.get_contact(session, row.contact_id)
        sender = await _sender(session, row, contact) if apology is not None else None
    if apology is not None and apology.status == DeliveryStatus.PENDING:
        await _send_apology(rt, apology, contact.address, contact.channel, sender)
    return cursor


def apology_ref(conversation_id: int, step: int) -> str:
    return f"{step_ref(conversation_id, step)}-error"


async def _send_apology(
    rt: Runtime, intent: Message, to: str, channel: str, sender: SenderIdentity | None
) -> None:
    """Best effort: the conversation has already ended; a provider refusing the apology too
    is recorded on the message, not raised."""
    message = OutboundMessage(intent.text or "")
    try:
        await outbox.deliver(rt, intent, message, to, channel, sender=sender)
    except ChannelError as exc:
        log.warning("apology %s not sent: %s", intent.client_ref, exc)
