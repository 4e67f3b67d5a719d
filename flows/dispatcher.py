"""The dispatcher: one scheduled flow that makes sure every conversation gets what it is owed.

Each run loops for one schedule interval, looking for work every tick — or at once when an
action is enqueued (PostgreSQL ``LISTEN parley_actions``); the schedule then starts
the next run, and a worker that starts kicks one at once. Work found is claimed and repaired
while holding the ``parley-dispatcher`` global concurrency limit (one slot), so however many
dispatcher runs are alive — a kicked one beside a scheduled one, replicas on several hosts — one
repairs at a time; a killed run stops renewing its lease and Prefect frees the slot. Idle ticks
cost one small database read and nothing in Prefect.

It trusts an expired lease as "that process is dead" only once it has itself reached the
database for a whole lease: after an outage that hit everyone, live runs get the time to renew
before anything of theirs is rescheduled.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, concurrency
from prefect.context import FlowRunContext

from parley.settings import Settings
from prefect_adapter.composition import get_runtime, get_settings
from prefect_adapter.outreach_tick import (
    ParkedChecks,
    action_signal,
    outreach_tick,
    recover_abandoned_actions,
)
from prefect_adapter.repairs import (
    Repair,
    StartPace,
    anything_owed,
    claim_work,
    failed_runs_of_active_conversations,
    paced_start_budget,
)
from prefect_adapter.runs import crash_dead_dispatcher_runs, ensure_next_run, slot_taken
from tasks.dispatcher import sweep

SLOT_LEASE_SECONDS = 60.0
"""Prefect's minimum; a dispatcher killed while repairing blocks the others at most this long."""
RECONCILE_EVERY_SECONDS = 5.0


def _run_name() -> str:
    return f"dispatcher {datetime.now(UTC):%Y-%m-%d %H:%M:%S}"


@flow(name="dispatcher", flow_run_name=_run_name, log_prints=False)
async def dispatcher() -> dict[str, int]:
    settings = get_settings()
    if _overtaken(settings):
        get_run_logger().info("due more than one interval ago: a newer run does the work")
        await _relay(settings)
        return {"late run left to a newer one": 1}
    totals = await _Ticks(settings).run()
    get_run_logger().info("dispatcher run done: %s", dict(totals))
    await _relay(settings)
    return dict(totals)


def _overtaken(settings: Settings) -> bool:
    """Prefect's scheduler keeps an hour of runs ahead, one per interval; a worker back after
    hours away finds all the missed ones due and would start them together, each holding a
    worker slot for a whole interval (after a day: every slot, conversations starved). Only
    the newest is needed; kicked and relayed runs are due when made, so never overtaken."""
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None or run.deployment_id is None or run.expected_start_time is None:
        return False
    late = datetime.now(UTC) - run.expected_start_time
    return late > timedelta(seconds=settings.dispatcher_interval_seconds)


async def _relay(settings: Settings) -> None:
    """No gap between dispatcher runs, whatever Prefect's scheduler has filled in yet."""
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None or run.deployment_id is None or (await get_runtime()).stopping:
        return
    within = timedelta(seconds=max(5.0, 4 * settings.dispatcher_tick_seconds))
    try:
        if await ensure_next_run(run.deployment_id, within=within, this_run=run.id):
            get_run_logger().info("no dispatcher run was due next: started one")
    except Exception as exc:  # the schedule starts the next one anyway
        get_run_logger().warning("could not relay to the next dispatcher run: %r", exc)


class _Ticks:
    """One dispatcher run's loop and what it remembers between ticks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.totals: Counter[str] = Counter()
        self.refused_since: float | None = None  # loop time the slot was first found taken
        self.healthy_since: float | None = None  # loop time of the first good tick after a bad
        self.reconciled_until = datetime.now(UTC) - timedelta(
            seconds=2 * settings.dispatcher_interval_seconds
        )
        self.next_reconcile = 0.0
        self.parked = ParkedChecks(settings.parked_health_check_seconds)
        self.pace = StartPace(settings.run_starts_per_second, asyncio.get_running_loop().time())

    async def run(self) -> Counter[str]:
        runtime = await get_runtime()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.dispatcher_interval_seconds
        try:  # only tidies the UI: a Prefect hiccup here must not fail the run
            await crash_dead_dispatcher_runs(self.settings)
        except Exception as exc:
            get_run_logger().warning("could not look for dead dispatcher runs: %r", exc)
        await recover_abandoned_actions(runtime, timedelta(seconds=4 * self.settings.lease_seconds))
        ready = action_signal(runtime)  # an enqueue wakes the loop; else the tick does
        try:
            while loop.time() < deadline and not runtime.stopping:
                try:
                    await self._tick(loop.time())
                except AcquireConcurrencySlotTimeoutError:
                    pass  # another dispatcher is repairing right now; look again next tick
                except Exception as exc:  # the database or Prefect may be away for a moment
                    self.healthy_since = None
                    get_run_logger().warning("dispatcher tick failed (%r); next tick", exc)
                await ready.wait(
                    max(0.0, min(self.settings.dispatcher_tick_seconds, deadline - loop.time()))
                )
        finally:
            await self.parked.aclose()
        return self.totals

    async def _tick(self, now: float) -> None:
        runtime = await get_runtime()
        self.totals.update(self.parked.poke(runtime))  # parked seats healthy again unpark
        self.totals.update(await outreach_tick(runtime))  # per-identity slots, not the repair's
        trust = self._trusts_leases(now)
        failed, scanned_at = await self._failed_runs(now)
        budget = await paced_start_budget(runtime, self.pace, now)
        if failed or await anything_owed(
            runtime, self.settings, trust_leases=trust, start_budget=budget
        ):
            self.totals.update(await self._repair_holding_the_slot(trust, failed))
        if scanned_at is not None:  # only once its finds were repaired: none is lost
            self.reconciled_until = scanned_at
        if self.healthy_since is None:
            self.healthy_since = now

    def _trusts_leases(self, now: float) -> bool:
        return (
            self.healthy_since is not None
            and now - self.healthy_since >= self.settings.lease_seconds
        )

    async def _failed_runs(self, now: float) -> tuple[tuple[Repair, ...], datetime | None]:
        if now < self.next_reconcile:
            return (), None
        scanned_at = datetime.now(UTC)
        since = self.reconciled_until - timedelta(seconds=RECONCILE_EVERY_SECONDS)
        found = await failed_runs_of_active_conversations(
            (await get_runtime()).db, self.settings, since
        )
        self.next_reconcile = now + RECONCILE_EVERY_SECONDS
        return found, scanned_at

    async def _repair_holding_the_slot(
        self, trust_leases: bool, failed: tuple[Repair, ...]
    ) -> Counter[str]:
        """Repair under the one slot. The slot only spares duplicate work — row claims already
        make concurrent repairs safe — so a slot leaked by a killed dispatcher (its lease runs
        a minute) must not stall recovery: refused for two leases, repair without it."""
        if await slot_taken(self.settings.dispatcher_limit):
            now = asyncio.get_running_loop().time()
            self.refused_since = self.refused_since or now
            if now - self.refused_since < 2 * self.settings.lease_seconds:
                return Counter()
            get_run_logger().warning(
                "%r held for %.0f s by another dispatcher; repairing without it (rows are "
                "claimed, so this is safe)",
                self.settings.dispatcher_limit,
                now - self.refused_since,
            )
            return await self._claim_and_repair(trust_leases, failed)
        self.refused_since = None
        async with concurrency(
            self.settings.dispatcher_limit,
            occupy=1,
            timeout_seconds=self.settings.dispatcher_tick_seconds,
            lease_duration=SLOT_LEASE_SECONDS,
            strict=True,
        ):
            return await self._claim_and_repair(trust_leases, failed)

    async def _claim_and_repair(
        self, trust_leases: bool, failed: tuple[Repair, ...]
    ) -> Counter[str]:
        runtime = await get_runtime()
        work = await claim_work(
            runtime,
            self.settings,
            trust_leases=trust_leases,
            extra=failed,
            start_budget=await paced_start_budget(
                runtime, self.pace, asyncio.get_running_loop().time()
            ),
        )
        self.pace.spend(sum(repair.kind == "paced start" for repair in work.repairs))
        if not work:
            return Counter()
        get_run_logger().info("repairing: %s", work.summary)
        return Counter(await sweep(work))
