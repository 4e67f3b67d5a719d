"""What the dispatcher repairs: every conversation gets what it is owed, read from Parley's row.

Requests try to start or resume runs right after storing a message; the dispatcher's ticks
repair what they could not, in four kinds:

* **start** — stored, but no flow run was created (Prefect was down);
* **paced start** — a lead import's conversation: its first run is created here, at
  ``PARLEY_RUN_STARTS_PER_SECOND`` (``StartPace``), never all of an import at once;
* **resume** — suspended while a message waits, or an operator asked for it (a resume gave up);
* **wake** — suspended on a timer whose time has come (on the runtime's clock);
* **look** — suspended, and an operator resumed it, completed its task or signalled it;
* **end** — ended from outside while its run was suspended: the run is resumed to finish;
* **recover** — a live run's lease expired, or a handed-over run never took over: its process
  is gone;
* **reconcile** — Prefect says a run of an active conversation failed, crashed or was cancelled.

The row is the truth. Rows are *claimed* (``SKIP LOCKED`` on PostgreSQL, so dispatcher replicas
split them and a live run renewing its lease is never touched) and stamped ``handed_over_at``,
so nobody takes them again for a lease; the Prefect state is changed only if it is still the
state just observed. Each row is repaired on its own, concurrently, with its own backoff, so a
conversation whose run can never be resumed delays nobody else.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Scheduled
from sqlalchemy import exists, select

from parley.conversation import executor
from parley.conversation import row as conversation_row
from parley.db import Database, queries
from parley.db.models import Conversation, utcnow
from parley.runtime import Runtime
from parley.settings import Settings
from parley.vocabulary import Status
from prefect_adapter.client import deployment_id, prefect_api
from prefect_adapter.runs import ResumeOutcome, create_run, resume_once, start_run

log = logging.getLogger(__name__)

RepairKind = Literal["start", "paced start", "resume", "wake", "look", "end", "recover"]
START_GRACE = timedelta(seconds=2)  # the webhook starts new conversations itself, first
MAX_RECOVERIES = 5  # failures of its runs in a row (no step between) before it is failed
BATCH = 200  # rows claimed per kind and tick; rows in backoff are skipped, never starving
CONCURRENCY = 20
REPAIR_BACKOFF_CAP = 300.0
REPAIR_TIMEOUT = 30.0  # one hung Prefect or database call never holds the dispatcher up
# Outcomes that changed nothing: trying again next lease would not either, so the row backs off.
NO_PROGRESS = frozenset({"scheduled for a worker", "waiting for its pause", "moved on"})


@dataclass(frozen=True)
class Repair:
    kind: RepairKind
    conversation_id: int
    flow_run_id: str | None


@dataclass(frozen=True)
class SweepWork:
    """Claimed rows; ids only, so it travels as a task input."""

    repairs: tuple[Repair, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.repairs)

    @property
    def summary(self) -> str:
        counts = Counter(repair.kind for repair in self.repairs)
        return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())) or "nothing"


class StartPace:
    """A token bucket for the runs of imported conversations: ``per_second`` starts on
    average, at most ``BURST_SECONDS`` worth at once (at least one), so 10,000 imported leads
    reach the Prefect server at a rate it holds while single starts (not paced) go on at once.
    The burst absorbs a tick that took longer than its interval (a slow sweep): the pace is
    kept on average instead of lost."""

    BURST_SECONDS = 5.0

    def __init__(self, per_second: float, now: float) -> None:
        self.per_second = per_second
        self.capacity = max(1.0, per_second * self.BURST_SECONDS)
        self.tokens = 1.0  # a fresh dispatcher run starts gently, then at the pace
        self.refilled_at = now

    def budget(self, now: float) -> int:
        """Starts allowed right now."""
        elapsed = max(0.0, now - self.refilled_at)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.per_second)
        self.refilled_at = now
        return int(self.tokens)

    def spend(self, starts: int) -> None:
        self.tokens = max(0.0, self.tokens - starts)

    @property
    def in_flight_cap(self) -> int:
        """Runs created but not yet taken over by a worker, at most: when the worker or the
        server falls behind, no more are created until they catch up (never a pile of runs
        that would be rescheduled as lost a lease later)."""
        return max(5, int(self.per_second * self.IN_FLIGHT_SECONDS))

    IN_FLIGHT_SECONDS = 10.0


async def paced_start_budget(rt: Runtime, pace: StartPace, now: float) -> int:
    """The pace's budget, less what the worker has not taken over yet."""
    budget = pace.budget(now)
    if budget <= 0:
        return 0
    async with rt.db.read() as session:
        in_flight = await queries.repairs.paced_starts_in_flight(session)
    return max(0, min(budget, pace.in_flight_cap - in_flight))


def _conditions(
    settings: Settings,
    now: datetime,
    clock_now: datetime,
    trust_leases: bool,
    start_budget: int = 0,
) -> dict[RepairKind, Any]:
    lease = timedelta(seconds=settings.lease_seconds)
    conditions: dict[RepairKind, Any] = {
        "start": queries.repairs.owed_a_start(now, START_GRACE),
        "resume": queries.repairs.owed_a_resume(now, lease),
        "wake": queries.repairs.owed_a_wake(clock_now, now, lease),
        "look": queries.repairs.owed_a_look(now, lease),
        "end": queries.repairs.owed_an_ending(now, lease),
    }
    if start_budget > 0:
        conditions["paced start"] = queries.repairs.owed_a_paced_start(now, lease)
    if trust_leases:
        conditions["recover"] = queries.repairs.lost_its_process(now, lease)
    return conditions


async def anything_owed(
    rt: Runtime, settings: Settings, *, trust_leases: bool, start_budget: int = 0
) -> bool:
    """One cheap read, no lock: an idle tick writes nothing and costs Prefect nothing."""
    now = utcnow()
    conditions = _conditions(settings, now, rt.clock.now(), trust_leases, start_budget)
    async with rt.db.read() as session:
        for condition in conditions.values():
            stmt = select(exists().where(condition, queries.repairs.repair_due(now)))
            if await session.scalar(stmt):
                return True
    return False


async def claim_work(
    rt: Runtime,
    settings: Settings,
    *,
    trust_leases: bool,
    extra: tuple[Repair, ...] = (),
    start_budget: int = 0,
) -> SweepWork:
    """``trust_leases``: the dispatcher itself reached the database for a whole lease, so an
    expired lease means a dead process — not a database that was away for everyone.
    ``start_budget``: how many imported conversations' runs may be started (``StartPace``)."""
    now = utcnow()
    repairs: list[Repair] = list(extra)
    conditions = _conditions(settings, now, rt.clock.now(), trust_leases, start_budget)
    async with rt.db.transaction() as session:
        for kind, condition in conditions.items():
            limit = min(BATCH, start_budget) if kind == "paced start" else BATCH
            rows = await queries.repairs.claim_for_repair(session, condition, now, limit)
            for row in rows:
                conversation_row.claimed_for_repair(row, now)
            repairs += [Repair(kind, row.id, row.flow_run_id) for row in rows]
    return SweepWork(tuple(dict.fromkeys(repairs)))


async def failed_runs_of_active_conversations(
    db: Database, settings: Settings, since: datetime
) -> tuple[Repair, ...]:
    """Runs Prefect failed, crashed or cancelled while Parley's row says the conversation is
    still going: the row is the truth, so each is recovered (or cancelled) from it."""
    runs = await _runs_in_trouble(settings, since)
    async with db.read() as session:
        rows = await queries.conversations.active_by_flow_run(
            session, [str(run.id) for run in runs]
        )
    return tuple(Repair("recover", row.id, row.flow_run_id) for row in rows)


async def _runs_in_trouble(settings: Settings, since: datetime) -> list[FlowRun]:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    ended = [StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    conversations = await deployment_id(settings.conversation_deployment)
    async with prefect_api() as client:
        by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[conversations]))
        finished = await client.read_flow_runs(
            deployment_filter=by_deployment,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ended)),
                end_time=FlowRunFilterEndTime(after_=since),
            ),
            limit=BATCH,
        )
        cancelling = await client.read_flow_runs(
            deployment_filter=by_deployment,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING]))
            ),
            limit=BATCH,
        )
    return [*finished, *cancelling]


# --- repairing -----------------------------------------------------------------------------


async def repair(rt: Runtime, settings: Settings, work: SweepWork) -> dict[str, int]:
    """Each claimed row on its own, a few at a time; a failure backs that row off only."""
    gate = asyncio.Semaphore(CONCURRENCY)
    outcomes: Counter[str] = Counter()

    async def one(item: Repair) -> None:
        async with gate:
            try:
                outcome = await asyncio.wait_for(_repair_one(rt, settings, item), REPAIR_TIMEOUT)
                log.info("conversation %s: %s -> %s", item.conversation_id, item.kind, outcome)
                outcomes[outcome] += 1
                if outcome in NO_PROGRESS:
                    await _back_off(rt.db, item.conversation_id)
            except Exception as exc:
                log.warning("repair %s of %s failed: %r", item.kind, item.conversation_id, exc)
                await _back_off(rt.db, item.conversation_id)
                outcomes["backed off"] += 1

    await asyncio.gather(*(one(item) for item in work.repairs))
    return dict(outcomes)


async def _repair_one(rt: Runtime, settings: Settings, item: Repair) -> str:
    if item.kind in ("start", "paced start"):
        await start_run(rt.db, settings, item.conversation_id)
        return "started"
    assert item.flow_run_id is not None
    if item.kind == "end":
        return await _end_run(rt, item.conversation_id, item.flow_run_id)
    if item.kind in ("resume", "wake", "look"):
        reason = {"wake": "timer", "look": "operator"}.get(item.kind, "sweep")
        outcome = await resume_once(item.flow_run_id, item.conversation_id, reason=reason)
        if outcome is ResumeOutcome.RESUMED:
            await _repaired(rt.db, item.conversation_id)
            return "woken" if item.kind == "wake" else "resumed"
    return await _recover(
        rt,
        settings,
        item.conversation_id,
        item.flow_run_id,
        claimed_as_lost=item.kind == "recover",
        claimed_suspended=item.kind in ("resume", "wake", "look"),
    )


async def _end_run(rt: Runtime, conversation_id: int, run_id: str) -> str:
    """A run suspended when its conversation ended from outside is resumed so it finishes
    (and shows how the conversation ended); one that is not paused ends by itself."""
    outcome = await resume_once(run_id, conversation_id, reason="operator")
    if outcome is ResumeOutcome.NOT_PAUSED:
        async with prefect_api() as client:
            run = await client.read_flow_run(UUID(run_id))
        if run.state is not None and run.state.type == StateType.PAUSED:
            return "waiting for its pause"
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        conversation_row.clear_wake(row)
    return "ended"


async def _recover(
    rt: Runtime,
    settings: Settings,
    conversation_id: int,
    run_id: str,
    *,
    claimed_as_lost: bool = False,
    claimed_suspended: bool = False,
) -> str:
    """What Prefect's state of the run says to do, for a conversation whose row is active.
    ``claimed_as_lost``: the row was claimed because its lease lapsed or nobody took the run
    over, so a run Prefect calls pending or running is only rescheduled if that is still so.
    ``claimed_suspended``: a resume, wake or look found the run not paused; one Prefect calls
    pending or running is only rescheduled once the row has said suspended for a lease."""
    async with prefect_api() as client:
        try:
            run = await client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            return await _rehome(rt, settings, conversation_id, "its flow run no longer exists")
        state = run.state.type if run.state else None
        action = _RECOVERIES.get(state, _leave_alone)
        context = _Context(
            rt, settings, client, conversation_id, run, claimed_as_lost, claimed_suspended
        )
        return await action(context)


@dataclass(frozen=True)
class _Context:
    rt: Runtime
    settings: Settings
    client: PrefectClient
    conversation_id: int
    run: FlowRun
    claimed_as_lost: bool = False
    claimed_suspended: bool = False


async def _reschedule(ctx: _Context) -> str:
    """Put the same flow run back to Scheduled, only if its state is still the one we read: a
    run that moved meanwhile is alive. Cached steps and send intents make the replay safe.

    A run Prefect calls pending or running may have been taken over since its row was claimed
    (on a loaded machine a worker can start a run seconds late): the row is read again under
    its lock, held until Prefect's state is set: the recovery acts on the row as it is now,
    not as it was when claimed, and a takeover cannot slip in between the look and the act.
    Every repair kind is guarded so: none forces a live run back to Scheduled."""
    state = ctx.run.state
    assert state is not None
    message = f"Parley: {state.type.value.lower()} without a live process"
    async with ctx.rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, ctx.conversation_id)
        if (refused := _still_alive(ctx, row)) is not None:
            return refused
        current = await ctx.client.read_flow_run(ctx.run.id)
        if current.state is None or current.state.id != state.id:
            return "moved on"
        if conversation_row.count_recovery(row) > MAX_RECOVERIES:
            exhausted = f"its run kept failing ({MAX_RECOVERIES} recoveries): {state.message}"
        else:
            exhausted = None
            await ctx.client.set_flow_run_state(
                ctx.run.id, Scheduled(name="Rescheduled", message=message), force=True
            )
    if exhausted is not None:
        # The row says failed, and the contact's next message starts a fresh conversation.
        await executor.mark_failed(ctx.rt, ctx.conversation_id, exhausted)
        return "failed"
    log.warning(
        "conversation %s: run %s rescheduled (%s)", ctx.conversation_id, ctx.run.id, message
    )
    return "rescheduled"


def _still_alive(ctx: _Context, row: Conversation) -> str | None:
    """Why a run Prefect calls pending or running must be left alone, or None to go on."""
    state = ctx.run.state
    if state is None or state.type not in (StateType.PENDING, StateType.RUNNING):
        return None  # failed, crashed: no process holds it
    now, run_id = utcnow(), str(ctx.run.id)
    if ctx.claimed_as_lost and not queries.repairs.still_without_a_process(row, run_id, now):
        return "moved on"
    if ctx.claimed_suspended:
        lease = timedelta(seconds=ctx.settings.lease_seconds)
        if row.flow_run_id != run_id or row.status is not Status.SUSPENDED:
            return "moved on"
        if not queries.repairs.had_its_chance_to_pause(row, run_id, now, lease):
            return "waiting for its pause"
    return None


async def _cancel(ctx: _Context) -> str:
    await executor.mark_cancelled(
        ctx.rt, ctx.conversation_id, "its flow run was cancelled in Prefect"
    )
    if ctx.run.state is not None and ctx.run.state.type == StateType.CANCELLING:
        from prefect.states import Cancelled

        await ctx.client.set_flow_run_state(ctx.run.id, Cancelled(), force=True)
    return "cancelled"


async def _resume_paused(ctx: _Context) -> str:
    outcome = await resume_once(str(ctx.run.id), ctx.conversation_id, reason="sweep")
    return "resumed" if outcome is ResumeOutcome.RESUMED else "waiting for its pause"


async def _rehome_completed(ctx: _Context) -> str:
    return await _rehome(ctx.rt, ctx.settings, ctx.conversation_id, "its flow run had completed")


async def _leave_alone(ctx: _Context) -> str:
    return "scheduled for a worker"  # Scheduled/Late: a worker serving the deployment takes it


_RECOVERIES: dict[StateType | None, Callable[[_Context], Awaitable[str]]] = {
    StateType.PENDING: _reschedule,
    StateType.RUNNING: _reschedule,
    StateType.CRASHED: _reschedule,
    StateType.FAILED: _reschedule,
    StateType.CANCELLING: _cancel,
    StateType.CANCELLED: _cancel,
    StateType.PAUSED: _resume_paused,
    StateType.COMPLETED: _rehome_completed,
}


async def _rehome(rt: Runtime, settings: Settings, conversation_id: int, why: str) -> str:
    """The row outlived its run: give the conversation a new flow run, which loads the row and
    carries on from the current step."""
    async with rt.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        attempt = conversation_row.count_recovery(row)
    run_id = await create_run(rt.db, settings, conversation_id, attempt=attempt)
    log.warning("conversation %s: %s; new flow run %s", conversation_id, why, run_id)
    return "rehomed"


async def _repaired(db: Database, conversation_id: int) -> None:
    async with db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        conversation_row.repair_succeeded(row)


async def _back_off(db: Database, conversation_id: int) -> None:
    async with db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        conversation_row.repair_failed(row, REPAIR_BACKOFF_CAP)
