"""One identity's next outreach action, from the queue to its recorded outcome.

The dispatcher calls ``drain`` (or ``perform_next`` for a single action) for an identity while
holding that identity's global concurrency slot (one action of an identity at a time). In
order:

1. **claim** the identity's next due action (``SKIP LOCKED``: two dispatchers never take it);
2. **decide** ``PROCEED`` or ``WAIT(reason, until)``: working hours, then daily, weekly and
   rolling caps, spacing with jitter, provider blocks (``parley.outreach.limits.decide`` over what
   the identity actually sent); a wait puts the action back with ``not_before = until``, marked
   ``put_off`` so that an operator's policy change decides it again at once;
3. the **pause gate** and the **freshness check**, under the conversation's row lock (the one
   the webhook stores messages under and operators' commands write): a conversation paused by
   an operator or by its campaign gets its action *held* (queue ``paused``, same key, no
   outcome) — it still waits for it, and its release puts the action back in line; then the
   conversation is still active and still waits for this action (the step that queued it,
   ``_awaits``), the contact wrote nothing since it was queued and the conversation has no
   unread message; otherwise the action is skipped and the conversation told why (a reply
   interrupts the sequence). The lock is released before the provider call (it would hold up
   the webhook for the call's length): a reply stored in between does not stop the call already
   decided; the conversation reads it next, and while it is unread no other action of the
   conversation passes this check;
4. the provider call, and a recovery for each kind of error, recorded on the action: identity
   expired → park the channel; rate limited → wait for retry-after; transient → a few retries
   with backoff, then failed; undeliverable → failed and the conversation completed with the
   reason; anything else permanent → failed (the node's error path).

Each outcome (sent, skipped, failed) is handed to the waiting conversation (``task_result`` of
its send node, ``row.action_settled``), and once that commits the dispatcher resumes its run
if the row says it is suspended (``drain``'s ``wake``; ``handshake.prepare_suspend`` is the
run's half: a run not yet suspended finds the outcome before it would). The repair's
``owed_a_look`` (the row's ``wake_requested_at``) is the safety net when that resume is lost.

Transactions: steps 1-3 are one (the conversation's row is taken with ``SKIP LOCKED``; when
the webhook holds it, the check waits for it in a transaction of its own before the call), and
the outcome of step 4 is written in the transaction that claims the identity's next action.

Exactly once (docs/architecture.md, durability rule 4). Each claim writes a stamp of its own on
the action, and every outcome is written only under that stamp (``queries.actions.settle_claimed``,
``finish_action``): an outcome from a claim that recovery has since given to another dispatcher
is refused. A dispatcher killed between the call and that commit leaves the action ``running``;
``recover_abandoned`` then decides by channel. The LinkedIn gateway deduplicates by
``Idempotency-Key``, so the action is queued again with the same key. WhatsApp and SMTP cannot
deduplicate, so the action becomes ``uncertain`` instead of being sent again — as does one whose
call timed out or broke after the provider may have taken it: it waits for the provider's own
status callback, which carries our key (WhatsApp's ``biz_opaque_callback_data``, the client_ref
in an email's Message-ID) and settles it (``reconcile_status``). With no callback within
``action_reconcile_seconds`` it ends ``failed`` with an ``uncertain:`` reason for an operator to
check: a lead who never got one message is better off than one who got it twice.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, NamedTuple
from uuid import uuid4

from sqlalchemy.ext.asyncio import AsyncSession

from parley import suppression
from parley.channels.base import OutreachAction, SenderIdentity, StatusUpdate
from parley.conversation import handoff, lifecycle, whatsapp_numbers
from parley.conversation import row as conversation_row
from parley.conversation.executor import end_from_outside
from parley.conversation.handshake import WakeUp, wakeup_for
from parley.db import queries
from parley.db.engine import PinnedConnection
from parley.db.models import Action, Contact, Conversation, Identity, utcnow
from parley.errors import (
    ChannelError,
    CreditsExhausted,
    IdentityExpired,
    InvalidInput,
    NotOnWhatsApp,
    PairRateLimited,
    ParleyError,
    RateLimited,
    TransientChannelError,
    TransitionNotAllowed,
    Undeliverable,
)
from parley.outreach import actions, identities
from parley.outreach.limits import Performed, Proceed, decide, history_needed, learn_retry_after
from parley.runtime import Runtime
from parley.vocabulary import (
    ACTION_FAILED,
    ACTION_SENT,
    ACTION_SKIPPED,
    CHANNEL_OF,
    PAUSED,
    READY,
    SENT_STATUSES,
    SUPPRESSED,
    TERMINAL,
    WHATSAPP_ACCOUNT_FIELD,
    DeliveryStatus,
    Status,
    WaitKind,
)

log = logging.getLogger(__name__)

Done = Literal[
    "idle", "waiting", "sent", "skipped", "held", "failed", "parked", "retrying", "uncertain"
]
MAX_ATTEMPTS = 4
RETRY_BACKOFF = timedelta(seconds=30)
RATE_LIMITED_FALLBACK = timedelta(hours=4)
PAIR_RATE_LIMITED_FALLBACK = timedelta(minutes=1)
"""WhatsApp paces one business-user pair at about a message every 6 s: a minute is ample."""
DEDUPLICATING_CHANNELS = frozenset({"linkedin"})
"""Channels whose provider performs a repeated call with the same key once (the gateway's
``Idempotency-Key``): only their uncertain actions may simply be tried again."""
UNCERTAIN_PREFIX = "uncertain: "
WakeRun = Callable[[WakeUp], Awaitable[None]]
"""Resumes the run an outcome is owed to, called right after the outcome committed (the
Prefect side: ``prefect_adapter.outreach_tick``); a failure there is left to the repair's
``owed_a_look``."""


@dataclass(frozen=True)
class _Claimed:
    action_id: int
    identity_id: int
    type: str
    channel: str
    payload: dict[str, Any]
    attempts: int
    conversation_id: int | None
    seen_inbound_id: int | None
    sender: SenderIdentity
    idempotency_key: str
    claim: str | None = None  # this claim's stamp: outcomes are written only under it
    fresh: bool = False  # the freshness check passed in the claim's transaction
    more: bool = True  # another action of the identity was due when this one was claimed


async def perform_next(rt: Runtime, identity_id: int, rng: random.Random | None = None) -> Done:
    """Take the identity's next due action as far as it can go now."""
    return (await drain(rt, identity_id, rng, limit=1))[0]


async def drain(
    rt: Runtime,
    identity_id: int,
    rng: random.Random | None = None,
    *,
    limit: int,
    stopping: Callable[[], bool] = lambda: False,
    wake: WakeRun | None = None,
) -> list[Done]:
    """Up to ``limit`` of the identity's due actions, one after the other (the caller holds the
    identity's slot); the list ends with ``idle`` or ``waiting`` when the identity may do
    nothing more now.

    One transaction per action: it records the outcome of the action before — so the decision
    counts that send — then claims the next one, decides and checks its freshness. An outcome
    is never lost to a failed claim: it is then recorded on its own before the error goes up.
    Once an outcome is committed, ``wake`` resumes the suspended run waiting for it."""
    rng = rng or random.Random()
    async with rt.db.pinned() as connection:
        return await _drain_on(connection, rt, identity_id, rng, limit, stopping, wake)


async def _drain_on(
    connection: PinnedConnection,
    rt: Runtime,
    identity_id: int,
    rng: random.Random,
    limit: int,
    stopping: Callable[[], bool],
    wake: WakeRun | None,
) -> list[Done]:
    done: list[Done] = []
    record: _Record | None = None
    due = True  # the last claim saw another action due beside its own
    while True:
        more = due and len(done) < limit and not stopping()
        owed: list[WakeUp] = []  # runs this transaction's outcomes are owed, once it commits
        try:
            async with connection.transaction() as session:
                if record is not None:
                    _add(owed, await record(session))
                step = await _claim(session, rt, identity_id, rng, owed) if more else None
        except Exception:
            if record is None:
                raise
            async with rt.db.transaction() as session:  # the held connection may be the trouble
                alone = await record(session)
            await wake_runs(wake, [alone] if alone else [])
            raise
        await wake_runs(wake, owed)
        record = None
        if step is None:
            return done if due else [*done, "idle"]
        if isinstance(step, _Claimed):
            due = step.more
            outcome, record = await _fresh_then_performed(rt, step)
        else:
            outcome = step
        done.append(outcome)
        if outcome in ("idle", "waiting"):
            return done


_Record = Callable[[AsyncSession], Awaitable[WakeUp | None]]
"""What became of a performed action, written in the transaction that claims the next one;
the run its outcome is owed to, if that run is to be resumed once it commits."""


def _add(owed: list[WakeUp], wakeup: WakeUp | None) -> None:
    if wakeup is not None:
        owed.append(wakeup)


async def wake_runs(wake: WakeRun | None, owed: list[WakeUp]) -> None:
    """The outcomes' explicit wake, after their commit: a failure is logged and left to the
    repair (the row's ``wake_requested_at`` is committed with the outcome)."""
    if wake is None:
        return
    for wakeup in owed:
        try:
            await wake(wakeup)
        except Exception as exc:
            log.warning(
                "conversation %s: resume after its action's outcome failed (%r); the repair "
                "will do it",
                wakeup.conversation_id,
                exc,
            )


async def _nothing(session: AsyncSession) -> None:
    """A held action's record: the hold was written in its own transaction already."""


async def _claim(
    session: AsyncSession, rt: Runtime, identity_id: int, rng: random.Random, owed: list[WakeUp]
) -> _Claimed | Done:
    """Claim the identity's next due action and decide; ``skipped`` when it is stale (its
    conversation's run, owed a resume by the skip, goes into ``owed``)."""
    identity = await queries.identities.lock_identity(session, identity_id)
    # The time of the decision is read once the identity is ours: a dispatcher that
    # waited for the lock must not judge spacing by a "now" older than the last send.
    now = rt.clock.now()
    stamp = uuid4().hex
    action = await queries.actions.claim_next_action(session, identity_id, now, stamp)
    if action is None:
        return "idle"
    if await actions.park_if_known_down(session, identity, action.id, action.channel, action.type):
        return "parked"  # its queue was parked after it was queued: never tried
    decision = await _decision(session, rt, identity, action.type, now, rng)
    if not isinstance(decision, Proceed):
        await queries.actions.unclaim_action(session, action.id, decision.until, decision.explain())
        identity.flagged = decision.explain() if decision.capped else None
        return "waiting"
    claimed = _Claimed(
        action.id,
        identity.id,
        action.type,
        action.channel,
        dict(action.payload),
        action.attempts,
        action.conversation_id,
        action.seen_inbound_id,
        sender_for(identity, action.channel),
        action.idempotency_key,
        claim=stamp,
        more=bool(action.more),
    )
    if claimed.conversation_id is None:
        return replace(claimed, fresh=True)
    # The freshness check in the same transaction when the conversation's row is free; when
    # the webhook holds it (storing a message), it is checked once that lock is released.
    row = await queries.conversations.lock_conversation_if_free(session, claimed.conversation_id)
    if row is None:
        return claimed
    if await _held_at_the_gate(session, row, claimed):
        return "held"
    stale = await _stale(session, row, claimed)
    if stale is None:
        return replace(claimed, fresh=True)
    _add(
        owed,
        await _record_outcome(
            session,
            rt,
            claimed,
            ACTION_SKIPPED,
            stale.reason,
            replied=stale.replied,
            complete=stale.ends,
        ),
    )
    return "skipped"


async def _decision(
    session: Any,
    rt: Runtime,
    identity: Identity,
    action_type: str,
    now: datetime,
    rng: random.Random,
) -> Any:
    """Only this type's sends count for it, as far back as its caps reach (``history_needed``).
    The decision's time is read again once the history is: an outcome is recorded without the
    identity's lock (a drain's last one commits on its own), so a send another dispatcher
    recorded a moment ago may be newer than ``now`` and would look like a spacing wait."""
    policy = identities.policy_of(identity)
    since = now - history_needed(policy.limits, action_type)  # type: ignore[arg-type]
    sent = await queries.actions.sent_history_of_type(session, identity.id, action_type, since)
    history = [Performed(action_type, at) for at in sent]  # type: ignore[arg-type]
    return decide(
        policy.limits,
        policy.working_hours,
        history,
        action_type,  # type: ignore[arg-type]
        max(now, rt.clock.now()),
        rng,
        blocked_until=identities.blocked_of(identity),
    )


def sender_for(identity: Identity, channel: str) -> SenderIdentity:
    """The account an action on ``channel`` goes out from. An identity is a person's seat on
    its own channel; its other channels' accounts (a LinkedIn seat's mailbox for the email
    fallback) are under ``settings[channel]`` with their own ``address``. WhatsApp: the
    identity's own number, whatever its channel (``whatsapp_numbers.whatsapp_sender``)."""
    if channel == "whatsapp":
        return whatsapp_numbers.whatsapp_sender(identity)
    if identity.channel == channel:
        own = {k: v for k, v in identity.settings.items() if not isinstance(v, dict)}
        return SenderIdentity(channel, identity.address, own)
    nested = identity.settings.get(channel)
    if isinstance(nested, dict) and nested.get("address"):
        return SenderIdentity(channel, str(nested["address"]), dict(nested))
    return SenderIdentity(channel, identity.address, {})


class _Stale(NamedTuple):
    """Why an action must not go out any more: whether because the contact wrote (a reply
    interrupts the sequence), and whether the conversation ends with it (a suppressed lead)."""

    reason: str
    replied: bool = False
    ends: bool = False


async def _stale(session: AsyncSession, row: Conversation, claimed: _Claimed) -> _Stale | None:
    """Why the action must not go out any more, or None. ``row`` is locked: the webhook stores
    messages under the same lock, so a message stored before this check is seen by it — also
    one stored before the action was queued that the conversation has not read yet (it was
    busy with its step, or waiting hot): the action was decided without it. The do-not-contact
    list is read here, at the last moment, so an action queued before its lead was suppressed
    never goes; the conversation ends with it (the sequence must not try another channel)."""
    suppressed = await _suppressed(session, row, claimed)
    if suppressed is not None:
        return _Stale(suppressed, ends=row.status not in TERMINAL)
    if row.status in TERMINAL:
        return _Stale(f"the conversation is {row.status.value}")
    if await queries.messages.inbound_after(session, row.id, claimed.seen_inbound_id):
        return _Stale("the contact wrote after it was queued", replied=True)
    if await queries.messages.has_unconsumed_inbound(session, row.id):
        return _Stale("the contact wrote and the conversation has not read it yet", replied=True)
    if not _awaits(row, claimed.payload):
        return _Stale("the conversation moved on")
    return None


async def _suppressed(session: AsyncSession, row: Conversation, claimed: _Claimed) -> str | None:
    """The skip reason when the action's recipient or any address of the conversation's lead
    is on the do-not-contact list for its identity (or installation-wide)."""
    contact = await queries.contacts.get_contact(session, row.contact_id)
    to = claimed.payload.get("to")
    addresses = [to if isinstance(to, str) else None, *suppression.lead_addresses(contact)]
    found = await suppression.suppressed_among(session, claimed.identity_id, addresses)
    if not found:
        return None
    entry = next(iter(found.values()))
    return f"{SUPPRESSED}: {entry.address} is on the do-not-contact list ({entry.reason})"


def _awaits(row: Conversation, payload: dict[str, Any]) -> bool:
    """The conversation waits for this very action: the one its step ``action_step`` queued.
    Matched by step, not by node: a graph that came back to the node has queued an action of
    its own since (the earlier one's outcome is not for it), and a migration may have renamed
    the node (its action is the same)."""
    step = payload.get("step")
    return row.waiting_for == WaitKind.ACTION and step is not None and row.action_step == step


async def _held_at_the_gate(session: AsyncSession, row: Conversation, claimed: _Claimed) -> bool:
    """The pause gate, on the dispatcher's side: a paused conversation's action is not skipped
    (its conversation would take the node's edge as if it had gone out) but held, with its key,
    until the conversation is released (``handoff.release_held``). A campaign's pause (or its
    draft status) holds the conversation here as its run's next step would (``paused_by:
    campaign``), so the campaign's resume (or activation) releases both. ``row`` is locked: a
    pause committed after this check finds the action on its way, and its outcome is handed
    to the conversation like any other."""
    if row.status in TERMINAL:
        return False
    if row.status is Status.PAUSED:
        reason = "held: the conversation is paused"
    elif await queries.campaigns.campaign_held(session, row.campaign_version_id):
        reason = "held: its campaign is paused"
        conversation_row.pause(row, by="campaign")
    else:
        return False
    await queries.actions.requeue_untried(session, claimed.action_id, PAUSED, reason)
    return True


async def _fresh_then_performed(rt: Runtime, claimed: _Claimed) -> tuple[Done, _Record]:
    """The freshness check if the claim could not make it, right before the provider call."""
    if not claimed.fresh and claimed.conversation_id is not None:
        async with rt.db.transaction() as session:
            row = await queries.conversations.lock_conversation(session, claimed.conversation_id)
            if await _held_at_the_gate(session, row, claimed):
                return "held", _nothing
            stale = await _stale(session, row, claimed)
        if stale is not None:
            return "skipped", _finishing(
                rt,
                claimed,
                ACTION_SKIPPED,
                stale.reason,
                replied=stale.replied,
                complete=stale.ends,
            )
    return await _perform(rt, claimed)


async def _perform(rt: Runtime, claimed: _Claimed) -> tuple[Done, _Record]:
    """The provider call; what to record of it is left to the caller's next transaction."""
    to = claimed.payload.get("to")
    if not to:
        reason = f"the contact has no {claimed.channel} address"
        return "failed", _finishing(rt, claimed, ACTION_FAILED, reason)
    request = OutreachAction(
        type=claimed.type,
        to=str(to),
        client_ref=claimed.idempotency_key,
        text=claimed.payload.get("text") or None,
        subject=claimed.payload.get("subject"),
        template=claimed.payload.get("template"),
        file=claimed.payload.get("file"),
        post=claimed.payload.get("post"),
    )
    try:
        result = await rt.outreach_channel(claimed.channel).perform(request, claimed.sender)
    except ChannelError as exc:
        return _recover(rt, claimed, exc)
    except ParleyError as exc:  # no such channel in this process: a configuration problem
        return "failed", _finishing(rt, claimed, ACTION_FAILED, f"{type(exc).__name__}: {exc}")
    return "sent", _finishing(rt, claimed, ACTION_SENT, None, provider_id=result.provider_id)


def _recover(rt: Runtime, claimed: _Claimed, exc: ChannelError) -> tuple[Done, _Record]:
    """The error taxonomy: each kind has its own recovery, recorded on the action."""
    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, IdentityExpired | CreditsExhausted):
        return "parked", partial(_park, rt=rt, claimed=claimed, exc=exc, what=what)
    if isinstance(exc, PairRateLimited):
        return "retrying", partial(_pair_rate_limited, rt=rt, claimed=claimed, exc=exc, what=what)
    if isinstance(exc, RateLimited):
        return "retrying", partial(_rate_limited, rt=rt, claimed=claimed, exc=exc, what=what)
    if _uncertain(claimed, exc):
        log.warning("action %s: %s; waiting for the provider's callback", claimed.action_id, what)
        return "uncertain", partial(_mark_uncertain, rt=rt, claimed=claimed, what=what)
    if isinstance(exc, TransientChannelError) and claimed.attempts < MAX_ATTEMPTS:
        log.warning("action %s: %s; retrying", claimed.action_id, what)
        not_before = rt.clock.now() + RETRY_BACKOFF * 2 ** (claimed.attempts - 1)
        return "retrying", partial(_requeue, claimed=claimed, not_before=not_before)
    if isinstance(exc, NotOnWhatsApp):
        return "failed", partial(_not_on_whatsapp, rt=rt, claimed=claimed, what=what)
    if isinstance(exc, Undeliverable):
        return "failed", _finishing(rt, claimed, ACTION_FAILED, what, complete=True)
    return "failed", _finishing(rt, claimed, ACTION_FAILED, what)


async def _not_on_whatsapp(
    session: AsyncSession, *, rt: Runtime, claimed: _Claimed, what: str
) -> WakeUp | None:
    """131026: the number has no WhatsApp. The action failed (its node's ``when: error``
    edge), and the lead is marked so that ``has_whatsapp`` is false from now on — the Cloud
    API cannot tell before a send, so the first send is the answer."""
    wakeup = await _record_outcome(session, rt, claimed, ACTION_FAILED, what)
    if claimed.conversation_id is not None:
        row = await queries.conversations.lock_conversation(session, claimed.conversation_id)
        await queries.contacts.merge_fields(
            session, row.contact_id, {WHATSAPP_ACCOUNT_FIELD: False}
        )
    return wakeup


def _uncertain(claimed: _Claimed, exc: ChannelError) -> bool:
    """The provider may have acted, and trying again could do it twice."""
    return (
        isinstance(exc, TransientChannelError)
        and exc.maybe_sent
        and claimed.channel not in DEDUPLICATING_CHANNELS
    )


async def _mark_uncertain(
    session: AsyncSession, *, rt: Runtime, claimed: _Claimed, what: str
) -> WakeUp | None:
    """Wait for the provider's status callback; one that came during the call settles it now."""
    action = await _still_claimed(session, claimed)
    if action is None:
        return None
    now = rt.clock.now()
    if action.provider_id is not None:  # the callback beat the call's answer
        return await _record_outcome(
            session, rt, claimed, ACTION_SENT, None, provider_id=action.provider_id
        )
    action.status = "uncertain"
    action.not_before = now + timedelta(seconds=rt.action_reconcile_seconds)
    action.performed_at, action.updated_at = now, utcnow()
    action.reason = f"{UNCERTAIN_PREFIX}{what}; waiting for the provider's status callback"
    return None


async def _still_claimed(session: AsyncSession, claimed: _Claimed) -> Action | None:
    """The action, locked, if it is still under this claim; else None (and why, logged)."""
    action = await queries.actions.lock_action(session, claimed.action_id)
    if action.claim == claimed.claim and action.status in queries.actions.UNSETTLED:
        return action
    log.warning(
        "action %s: outcome of an old claim refused (it is %s now)",
        claimed.action_id,
        action.status,
    )
    return None


async def _park(
    session: AsyncSession, *, rt: Runtime, claimed: _Claimed, exc: ChannelError, what: str
) -> None:
    now = rt.clock.now()
    identity = await queries.identities.lock_identity(session, claimed.identity_id)
    action = await _still_claimed(session, claimed)
    if action is None:
        return
    queue = actions.parked_queue(identity, claimed.channel, exc)
    action.status, action.reason, action.updated_at = "queued", what, utcnow()
    action.attempts = max(0, action.attempts - 1)  # not its fault: the try does not count
    await session.flush()
    moved = await actions.park(session, identity, claimed.channel, queue, what, now)
    action.queue = queue
    log.warning(
        "identity %s: %s; %d %s actions parked in %r",
        claimed.identity_id,
        what,
        moved + 1,
        claimed.channel,
        queue,
    )


async def _rate_limited(
    session: AsyncSession, *, rt: Runtime, claimed: _Claimed, exc: RateLimited, what: str
) -> None:
    now = rt.clock.now()
    retry_after = exc.retry_after if exc.retry_after is not None else None
    action = await _still_claimed(session, claimed)
    if action is None:
        return
    identity = await queries.identities.lock_identity(session, action.identity_id)
    blocked = identities.blocked_of(identity)
    fallback = RATE_LIMITED_FALLBACK.total_seconds()
    updated = learn_retry_after(
        blocked,
        claimed.type,  # type: ignore[arg-type]
        now,
        retry_after if retry_after is not None else fallback,
    )
    identity.blocked_until = {f"{c}/{t}": at.isoformat() for (c, t), at in updated.items()}
    until = updated[(claimed.channel, claimed.type)]  # type: ignore[index]
    action.status, action.not_before = "queued", until
    action.reason, action.updated_at = what, utcnow()
    action.attempts = max(0, action.attempts - 1)


async def _pair_rate_limited(
    session: AsyncSession, *, rt: Runtime, claimed: _Claimed, exc: PairRateLimited, what: str
) -> None:
    """Only the business-contact pair waits: this action and the identity's other queued
    ones to the same recipient; its other leads, and the action type, are not blocked."""
    fallback = PAIR_RATE_LIMITED_FALLBACK.total_seconds()
    delay = exc.retry_after if exc.retry_after is not None else fallback
    until = rt.clock.now() + timedelta(seconds=max(delay, 0.0))
    action = await queries.actions.lock_action(session, claimed.action_id)
    action.status, action.not_before = "queued", until
    action.reason, action.updated_at = what, utcnow()
    action.attempts = max(0, action.attempts - 1)
    await session.flush()
    to = claimed.payload.get("to")
    if to:
        await queries.actions.put_off_actions_to(
            session, claimed.identity_id, claimed.channel, str(to), until, what
        )


async def _requeue(session: AsyncSession, *, claimed: _Claimed, not_before: datetime) -> None:
    action = await _still_claimed(session, claimed)
    if action is None:
        return
    action.status, action.not_before, action.updated_at = "queued", not_before, utcnow()


def _finishing(
    rt: Runtime,
    claimed: _Claimed,
    outcome: str,
    reason: str | None,
    *,
    provider_id: str | None = None,
    replied: bool = False,
    complete: bool = False,
) -> _Record:
    """The outcome, to be recorded in the transaction that claims the identity's next action."""
    return partial(
        _record_outcome,
        rt=rt,
        claimed=claimed,
        outcome=outcome,
        reason=reason,
        provider_id=provider_id,
        replied=replied,
        complete=complete,
    )


async def _record_outcome(
    session: AsyncSession,
    rt: Runtime,
    claimed: _Claimed,
    outcome: str,
    reason: str | None,
    *,
    provider_id: str | None = None,
    replied: bool = False,
    complete: bool = False,
) -> WakeUp | None:
    """Record the outcome and hand it to the conversation if it still waits for this action
    (``_awaits``: by the step that queued it); nothing, when the action is no longer under this
    claim. Returns the run to resume once this commits, if any."""
    now = rt.clock.now()
    recorded = await queries.actions.finish_action(
        session,
        claimed.action_id,
        outcome=outcome,
        reason=reason,
        provider_id=provider_id,
        performed_at=now if outcome == ACTION_SENT else None,
        claim=claimed.claim,
    )
    if not recorded:
        log.warning("action %s: %s of an old claim refused", claimed.action_id, outcome)
        return None
    if claimed.conversation_id is None:
        return None
    return await _deliver_outcome(
        session, claimed.conversation_id, claimed.payload, outcome, reason, now, replied, complete
    )


async def _deliver_outcome(
    session: AsyncSession,
    conversation_id: int,
    payload: dict[str, Any],
    outcome: str,
    reason: str | None,
    now: datetime,
    replied: bool = False,
    complete: bool = False,
) -> WakeUp | None:
    """Give the outcome to the conversation waiting for the action (the step that queued it).
    Returns the run to resume once this commits: a suspended one (under this lock, as the
    webhook's ``wakeup_for`` after storing a message); a live run finds the outcome itself."""
    row = await queries.conversations.lock_conversation(session, conversation_id)
    if row.status in TERMINAL:
        return None
    if complete:
        sleeping = row.status is Status.SUSPENDED and row.flow_run_id is not None
        await end_from_outside(session, row, Status.COMPLETED, reason or "undeliverable", now)
        conversation_row.request_wake(row)  # its suspended run is resumed to finish
        return WakeUp(row.id, "resume", row.flow_run_id) if sleeping else None
    if _awaits(row, payload) and row.task_result is None:
        conversation_row.action_settled(row, outcome, reason, replied=replied)
        return wakeup_for(row, created=False)
    return None


# --- recovery and reconciliation --------------------------------------------------------------


@dataclass(frozen=True)
class Recovered:
    """What ``recover_abandoned`` did: queued again with the same key (a deduplicating
    channel), made uncertain (waiting for a callback), settled as sent from a callback that
    came while the claim was running, and uncertain ones given up on."""

    requeued: int = 0
    uncertain: int = 0
    sent: int = 0
    expired: int = 0
    owed: tuple[WakeUp, ...] = ()  # runs their outcomes are owed a resume (see ``wake_runs``)

    @property
    def total(self) -> int:
        return self.requeued + self.uncertain + self.sent + self.expired


async def recover_abandoned(rt: Runtime, older_than: timedelta) -> Recovered:
    """Actions whose dispatcher died (or whose call outlived ``older_than``) and uncertain ones
    whose wait for a callback is over. Each write is fenced by the claim stamp it saw, so a
    slow call that is still alive keeps its own outcome: it is never performed a second time
    on a channel that cannot deduplicate, and on one that can the new claim's outcome wins."""
    requeued = uncertain = sent = expired = 0
    now = rt.clock.now()
    owed: list[WakeUp] = []
    async with rt.db.transaction() as session:
        for action in await queries.actions.stale_running_actions(session, utcnow() - older_than):
            how = await _recover_one(session, rt, action, now, owed)
            requeued += how == "requeued"
            uncertain += how == "uncertain"
            sent += how == "sent"
        for action in await queries.actions.uncertain_actions_due(session, now):
            expired += await _give_up_uncertain(session, rt, action, now, owed)
    return Recovered(requeued, uncertain, sent, expired, tuple(owed))


async def _recover_one(
    session: AsyncSession, rt: Runtime, action: Action, now: datetime, owed: list[WakeUp]
) -> str:
    if action.provider_id is not None:  # its status callback came while the claim ran
        done = await _settle(session, action, ACTION_SENT, None, action.provider_id, now, owed)
        return "sent" if done else "raced"
    if action.channel in DEDUPLICATING_CHANNELS:
        requeue: dict[str, Any] = {
            "status": "queued",
            "claim": None,
            "reason": "its dispatcher stopped mid-action; retried with the same key",
        }
        done = await queries.actions.settle_claimed(session, action.id, action.claim, requeue)
        return "requeued" if done else "raced"
    claimed_at = action.claimed_at or utcnow()
    values: dict[str, Any] = {
        "status": "uncertain",
        "not_before": now + timedelta(seconds=rt.action_reconcile_seconds),
        "performed_at": now - (utcnow() - claimed_at),  # the attempt, on the driven clock
        "reason": f"{UNCERTAIN_PREFIX}its dispatcher stopped mid-action (or the call outlived "
        "the recovery threshold); not sent again: waiting for the provider's status callback",
    }
    done = await queries.actions.settle_claimed(session, action.id, action.claim, values)
    return "uncertain" if done else "raced"


async def _give_up_uncertain(
    session: AsyncSession, rt: Runtime, action: Action, now: datetime, owed: list[WakeUp]
) -> bool:
    waited = rt.action_reconcile_seconds
    reason = (
        f"{UNCERTAIN_PREFIX}no status callback from {action.channel} within {waited:g} s; not "
        "sent again, since the lead may have it: check with the provider and send by hand"
    )
    done = await _settle(session, action, ACTION_FAILED, reason, None, now, owed)
    if done:
        log.warning("action %s: %s", action.id, reason)
    return done


async def reconcile_status(
    session: AsyncSession,
    update: StatusUpdate,
    now: datetime,
    owed: list[WakeUp] | None = None,
) -> bool:
    """A provider's status callback about an outreach action (its key came back as
    ``client_ref``): an uncertain action is settled by it, a running one keeps the provider's
    id so that recovery knows it went out. False when no action has that key. ``owed`` gets
    the suspended run the settled outcome is for, to resume once this commits."""
    if update.client_ref is None:
        return False
    action = await queries.actions.lock_action_by_key(session, update.client_ref)
    if action is None:
        return False
    if action.status == "running" and update.status in SENT_STATUSES:
        action.provider_id = action.provider_id or update.provider_message_id
    elif action.status == "uncertain" and update.status in SENT_STATUSES:
        await _settle(session, action, ACTION_SENT, None, update.provider_message_id, now, owed)
        log.info("action %s reconciled from its status callback: sent", action.id)
    elif action.status == "uncertain" and update.status == DeliveryStatus.FAILED:
        reason = f"the provider reports it failed: {update.error_summary or 'no detail'}"
        await _settle(session, action, ACTION_FAILED, reason, update.provider_message_id, now, owed)
    return True


async def _settle(
    session: AsyncSession,
    action: Action,
    outcome: str,
    reason: str | None,
    provider_id: str | None,
    now: datetime,
    owed: list[WakeUp] | None = None,
) -> bool:
    """Finish ``action`` under the claim it has and hand the outcome to its conversation (the
    run to resume once this commits goes into ``owed``; without it, the repair resumes it)."""
    values: dict[str, Any] = {"status": "done", "outcome": outcome, "reason": reason}
    if provider_id is not None:
        values["provider_id"] = provider_id
    if outcome == ACTION_SENT and action.performed_at is None:
        values["performed_at"] = now
    if not await queries.actions.settle_claimed(session, action.id, action.claim, values):
        return False
    if action.conversation_id is not None:
        payload = dict(action.payload)
        wakeup = await _deliver_outcome(
            session, action.conversation_id, payload, outcome, reason, now
        )
        if owed is not None:
            _add(owed, wakeup)
    return True


# --- manual sends -----------------------------------------------------------------------------

MANUAL_TYPES: dict[str, str] = {"linkedin": "linkedin_message", "email": "email"}


@dataclass(frozen=True)
class ManualSend:
    """What became of an operator's message: sent (the sequence is interrupted: its queued
    actions are skipped, the node waiting for one counts as ``taken_over``, and the
    conversation is paused for the person who took over), or the reason nothing was sent."""

    sent: bool
    reason: str
    action_id: int | None = None


async def manual_send(
    rt: Runtime,
    conversation_id: int,
    text: str,
    *,
    action_type: str | None = None,
    subject: str | None = None,
    rng: random.Random | None = None,
) -> ManualSend:
    """Send ``text`` to the conversation's contact now, from its identity, through the same
    decision as the dispatcher's actions: outside working hours, over a cap, while the channel
    is parked, nothing is sent and the caller gets the reason."""
    if not text.strip():
        raise InvalidInput("a manual send needs a text")
    claimed = await _claim_manual(rt, conversation_id, text, action_type, subject, rng)
    if isinstance(claimed, ManualSend):
        return claimed
    outcome, record = await _perform(rt, claimed)
    async with rt.db.transaction() as session:
        await record(session)
        if outcome != "sent":
            await _give_back_held(session, conversation_id)
    if outcome != "sent":
        async with rt.db.read() as session:
            action = await queries.actions.get_action(session, claimed.action_id)
        return ManualSend(False, action.reason or outcome, claimed.action_id)
    await _take_over(rt, conversation_id)
    return ManualSend(True, "sent; the automated sequence is paused", claimed.action_id)


async def _claim_manual(
    rt: Runtime,
    conversation_id: int,
    text: str,
    action_type: str | None,
    subject: str | None,
    rng: random.Random | None,
) -> _Claimed | ManualSend:
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        if row.status in TERMINAL:
            raise TransitionNotAllowed(f"conversation {row.id} is {row.status.value}")
        identity = await queries.identities.lock_identity(session, row.identity_id)
        now = rt.clock.now()  # read once the identity is ours (see _claim_and_decide)
        kind = action_type or MANUAL_TYPES.get(identity.channel)
        if kind is None or kind not in CHANNEL_OF:
            raise InvalidInput(f"no manual action type for a {identity.channel} identity: pass one")
        channel = CHANNEL_OF[kind]  # type: ignore[index]
        contact = await queries.contacts.get_contact(session, row.contact_id)
        refused = await _manual_to_suppressed(session, identity.id, contact)
        if refused is not None:
            return refused
        parked = queries.actions.parked_queue_of(identity, channel, kind)
        if parked is not None:
            return ManualSend(False, f"{parked} is parked: {identity.parked[parked]}")
        decision = await _decision(session, rt, identity, kind, now, rng or random.Random())
        if not isinstance(decision, Proceed):
            return ManualSend(False, decision.explain())
        # The sequence's ready actions are held while the hand-sent message is on its way: a
        # dispatcher must not send the automated one beside it (``_take_over`` skips them, a
        # manual send that fails gives them back).
        await queries.actions.hold_ready_actions(session, row.id, PAUSED, HAND_SENDING)
        action = Action(
            identity_id=identity.id,
            conversation_id=row.id,
            channel=channel,
            type=kind,
            payload={
                "to": handoff.recipient(contact, channel),
                "text": text,
                "subject": subject,
                "manual": True,
            },
            queue=READY,
            not_before=now,
            status="running",
            attempts=1,
            claimed_at=utcnow(),
            claim=uuid4().hex,
            idempotency_key=f"manual-{uuid4().hex}",
        )
        session.add(action)
        await session.flush()
        return _Claimed(
            action.id,
            identity.id,
            kind,
            channel,
            dict(action.payload),
            1,
            None,
            None,
            sender_for(identity, channel),
            action.idempotency_key,
            claim=action.claim,
        )


async def _manual_to_suppressed(
    session: AsyncSession, identity_id: int, contact: Contact
) -> ManualSend | None:
    """A person's message is no exception to the do-not-contact list."""
    entry = await suppression.suppression_of(session, identity_id, contact)
    if entry is None:
        return None
    return ManualSend(
        False, f"{SUPPRESSED}: {entry.address} is on the do-not-contact list ({entry.reason})"
    )


TAKEN_OVER_REASON = "a person took over with a manual message"
HAND_SENDING = "held: a person is sending a message by hand"


async def _give_back_held(session: AsyncSession, conversation_id: int) -> None:
    """The hand-sent message did not go out: what ``_claim_manual`` held goes back in line,
    unless an operator's pause holds the conversation anyway (its resume releases them)."""
    row = await queries.conversations.lock_conversation(session, conversation_id)
    if row.status is not Status.PAUSED:
        await handoff.release_held(session, conversation_id)


async def _take_over(rt: Runtime, conversation_id: int) -> None:
    """A person wrote: the sequence's queued actions are skipped and the conversation paused
    (resume it to let the sequence go on). The node waiting for one of those actions counts as
    done, ``taken_over`` (the hand-sent message stands in for it): resumed, the conversation
    leaves it by its ``when: taken_over`` edge, else by its other edges as if it had been sent
    — it never waits for an action that is not coming."""
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        for action in await queries.actions.actions_of_conversation(session, conversation_id):
            if action.status == "queued":
                action.status, action.outcome = "done", ACTION_SKIPPED
                action.reason = TAKEN_OVER_REASON
                if _waits_for(row, action):
                    conversation_row.action_taken_over(row, TAKEN_OVER_REASON)
    with contextlib.suppress(TransitionNotAllowed):  # it ended meanwhile
        await lifecycle.pause(rt.db, conversation_id)


def _waits_for(row: Conversation, action: Action) -> bool:
    """The (locked) conversation waits for ``action``'s outcome: the step that queued it."""
    return row.status not in TERMINAL and _awaits(row, action.payload) and row.task_result is None
