"""The dispatcher: one scheduled flow that makes sure every conversation gets what it is owed.

Each run loops for one schedule interval, looking for work every tick; the schedule then starts
the next run, and a worker that starts kicks one at once. Work found is done while holding the
``parley-dispatcher`` global concurrency limit (one slot), so however many dispatcher runs are
alive — a kicked one beside a scheduled one, replicas on several hosts — one repairs at a time;
a killed run stops renewing its lease and Prefect frees the slot. Idle ticks cost one small
database read and nothing in Prefect.

Today it repairs wake-ups (conversations never started, resumes that gave up, runs whose process
died); due timers and the per-identity action queues join it here.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, concurrency

from parley.settings import Settings, get_settings
from tasks.runs import crash_dead_dispatcher_runs
from tasks.runtime import get_runtime
from tasks.sweep import find_work, sweep

SLOT_LEASE_SECONDS = 60.0
"""Prefect's minimum; a dispatcher killed while repairing blocks the others at most this long."""


def _run_name() -> str:
    return f"dispatcher {datetime.now(UTC):%Y-%m-%d %H:%M:%S}"


@flow(name="dispatcher", flow_run_name=_run_name, log_prints=False)
async def dispatcher() -> dict[str, int]:
    settings = get_settings()
    totals = await _dispatch_for_one_interval(settings)
    get_run_logger().info("dispatcher run done: %s", dict(totals))
    return dict(totals)


async def _dispatch_for_one_interval(settings: Settings) -> Counter[str]:
    logger = get_run_logger()
    runtime = await get_runtime()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.dispatcher_interval_seconds
    totals: Counter[str] = Counter()
    await crash_dead_dispatcher_runs(settings)
    while loop.time() < deadline and not runtime.stopping:
        try:
            if await find_work(runtime.db, settings):
                totals.update(await _repair_holding_the_slot(settings))
        except AcquireConcurrencySlotTimeoutError:
            pass  # another dispatcher is repairing right now; look again next tick
        except Exception as exc:  # the database or Prefect may be away for a moment
            logger.warning("dispatcher tick failed (%r); trying again next tick", exc)
        await asyncio.sleep(settings.dispatcher_tick_seconds)
    return totals


async def _repair_holding_the_slot(settings: Settings) -> Counter[str]:
    async with concurrency(
        settings.dispatcher_limit,
        occupy=1,
        timeout_seconds=settings.dispatcher_tick_seconds,
        lease_duration=SLOT_LEASE_SECONDS,
        strict=True,
    ):
        # Looked at again under the slot: another dispatcher may have just done it.
        work = await find_work((await get_runtime()).db, settings)
        return Counter(await sweep(work)) if work else Counter()
