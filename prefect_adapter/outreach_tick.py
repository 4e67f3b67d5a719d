"""The dispatcher's outreach half: every identity with due actions, in parallel, at most one
action of an identity at a time.

"One at a time" is a Prefect global concurrency limit per identity (``identity-{id}``, one
slot, visible on the UI's Concurrency page), held for the tick by
``prefect_adapter.concurrency_slots`` (strict: an identity without its limit is not worked). An
identity whose slot another dispatcher run or host holds is skipped this tick.

An action's outcome wakes its conversation by its own path: once the outcome is committed, the
suspended run waiting for it is resumed (``resume_after_outcome``), beside the drains, as the
webhook resumes a run after storing a message. The repair's ``owed_a_look`` is only the safety
net for a resume that was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from datetime import timedelta
from functools import partial

from parley.action_signal import ActionSignal, action_signal_for
from parley.conversation.handshake import WakeUp
from parley.db import queries
from parley.outreach import dispatch, parked
from parley.runtime import Runtime
from prefect_adapter.concurrency_slots import HeldSlots, identity_slots
from prefect_adapter.runs import PREFECT_UNAVAILABLE, ResumeRejected, resume_run

log = logging.getLogger(__name__)

IDENTITIES_PER_TICK = 200
PARALLEL_IDENTITIES = 10
ACTIONS_PER_IDENTITY_PER_TICK = 20
OUTCOME_RESUME_SECONDS = 5.0
"""How long the resume after an outcome retries a run Prefect has not paused yet (it marked
itself suspended a moment ago); past that, the repair's look resumes it."""
_rng = random.Random()
_signal: ActionSignal | None = None


def action_signal(rt: Runtime) -> ActionSignal:
    """This process's wake-up for ready actions: one LISTEN connection on PostgreSQL (kept
    across dispatcher runs, like the inbox's), a plain sleep on SQLite."""
    global _signal
    if _signal is None:
        _signal = action_signal_for(rt.db.url)
    return _signal


async def outreach_tick(rt: Runtime, *, parallel: int = PARALLEL_IDENTITIES) -> Counter[str]:
    """Due actions of every identity that has some, identities in parallel."""
    async with rt.db.read() as session:
        identity_ids = await queries.actions.identities_with_due_actions(
            session, rt.clock.now(), IDENTITIES_PER_TICK
        )
    if not identity_ids:
        return Counter()
    resumes = _Resumes(rt)
    try:
        async with identity_slots(identity_ids) as held:
            totals: Counter[str] = Counter({"identity busy elsewhere": len(held.busy_elsewhere)})
            gate = asyncio.Semaphore(parallel)

            async def one(identity_id: int) -> None:
                async with gate:
                    totals.update(await _drain(rt, identity_id, held, resumes.start))

            await asyncio.gather(*(one(identity_id) for identity_id in held.identity_ids))
    finally:
        await resumes.finished()
    return +totals


async def resume_after_outcome(rt: Runtime, wakeup: WakeUp) -> None:
    """The outreach outcome's own wake: right after the dispatcher committed an action's
    outcome for a conversation whose run is suspended, resume that run (as
    ``prefect_adapter.runs.wake`` does after the webhook stored a message). Whatever fails here
    the repair's ``owed_a_look`` finishes: the outcome and the row's wake request are committed
    already."""
    if wakeup.flow_run_id is None:
        return
    try:
        await resume_run(
            rt.db,
            wakeup.conversation_id,
            wakeup.flow_run_id,
            give_up_after=OUTCOME_RESUME_SECONDS,
            reason="action",
        )
    except (*PREFECT_UNAVAILABLE, ResumeRejected) as exc:
        log.warning(
            "conversation %s: resume after its action's outcome failed (%r); the repair will",
            wakeup.conversation_id,
            exc,
        )


class _Resumes:
    """The resumes a tick's outcomes owe, each started once its outcome committed and run
    beside the drains (a resume may retry for a moment, the identity's slot is not held up
    for it); the tick ends once they have."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.running: list[asyncio.Task[None]] = []

    async def start(self, wakeup: WakeUp) -> None:
        self.running.append(asyncio.create_task(resume_after_outcome(self.rt, wakeup)))

    async def finished(self) -> None:
        await asyncio.gather(*self.running, return_exceptions=True)


async def _drain(
    rt: Runtime, identity_id: int, held: HeldSlots, wake: dispatch.WakeRun
) -> Counter[str]:
    """One identity's due actions while its slot is held; its trouble never stops the others."""
    if held.expiring() or rt.stopping:
        return Counter({"identity left for the next tick": 1})
    try:
        outcomes = await dispatch.drain(
            rt,
            identity_id,
            _rng,
            limit=ACTIONS_PER_IDENTITY_PER_TICK,
            stopping=lambda: rt.stopping or held.expiring(),
            wake=wake,
        )
    except Exception as exc:
        log.warning("identity %s: outreach tick failed: %r", identity_id, exc)
        return Counter({"identity failed": 1})
    return Counter(f"action {outcome}" for outcome in outcomes)


async def recover_abandoned_actions(rt: Runtime, older_than: timedelta) -> int:
    """Actions a dispatcher claimed and never finished (it was killed mid-call, or the call is
    slower than ``older_than``): on the LinkedIn gateway they go back to the queue with the
    same ``Idempotency-Key``; on WhatsApp and email, which cannot deduplicate, they wait for
    the provider's status callback instead of going out twice (``parley.outreach.dispatch``)."""
    recovered = await dispatch.recover_abandoned(rt, older_than)
    if recovered.total:
        log.warning("abandoned or uncertain actions: %s", recovered)
    await dispatch.wake_runs(partial(resume_after_outcome, rt), list(recovered.owed))
    return recovered.total


PARKED_SCAN_SECONDS = 10.0
"""The scan for parked queues due a look runs at most this often (each queue is looked at
once per ``PARLEY_PARKED_HEALTH_CHECK_SECONDS``)."""


class ParkedChecks:
    """One dispatcher run's health checks of parked queues (``parley.outreach.parked``), in the
    background of its ticks: a provider that takes its timeout to answer never holds up the
    tick's actions, resumes and repairs. One pass at a time; ``aclose`` at the run's end."""

    def __init__(self, every_seconds: float) -> None:
        self.every = timedelta(seconds=every_seconds)
        self._task: asyncio.Task[Counter[str]] | None = None
        self._next_scan = 0.0

    def poke(self, rt: Runtime) -> Counter[str]:
        """What the last finished pass did; starts the next one when it is time."""
        done: Counter[str] = Counter()
        if self._task is not None and self._task.done():
            task, self._task = self._task, None
            if not task.cancelled() and task.exception() is not None:
                log.warning("parked queues' health check failed: %r", task.exception())
            elif not task.cancelled():
                done.update({f"parked queue {k}": n for k, n in task.result().items()})
        now = asyncio.get_running_loop().time()
        if self._task is None and now >= self._next_scan and not rt.stopping:
            self._next_scan = now + min(PARKED_SCAN_SECONDS, self.every.total_seconds())
            self._task = asyncio.create_task(parked.check_parked_queues(rt, self.every))
        return done

    async def aclose(self) -> None:
        """A pass cut short loses nothing: its queues are looked at again an interval on."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
