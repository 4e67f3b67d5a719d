"""The sweep: the safety net that makes every wake-up eventually happen.

Requests try to start or resume runs right after storing a message; the dispatcher flow calls
``sweep_once`` every tick to repair what they could not: conversations never started (Prefect
was down), suspended runs with a message waiting (a resume that gave up), and runs whose process
died (lease expired: reschedule the same flow run; cached steps and send intents make the
replay safe).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled

from parley.db import Database, queries
from parley.db.models import utcnow
from parley.settings import Settings, get_settings
from tasks.runs import resume_run, start_run
from tasks.runtime import get_runtime

log = logging.getLogger(__name__)

# A run in one of these states for longer than a lease, while our row says nobody works on
# it, was claimed or run by a process that is gone.
ORPHANABLE = {StateType.RUNNING, StateType.PENDING}


@dataclass(frozen=True)
class SweepWork:
    """What one look at the database found owed; ids only, so it travels as a task input."""

    to_start: tuple[int, ...] = ()
    to_resume: tuple[tuple[int, str], ...] = ()
    orphaned: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.to_start or self.to_resume or self.orphaned)

    @property
    def summary(self) -> str:
        counts = (len(self.to_start), len(self.to_resume), len(self.orphaned))
        return "start {}, resume {}, orphans {}".format(*counts)


async def find_work(db: Database, settings: Settings) -> SweepWork:
    """One cheap read; the dispatcher calls it every tick and creates a task run only when it
    finds something, so an idle Parley adds nothing to the Prefect UI."""
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.lease_seconds)
    async with db.read() as session:
        to_start = await queries.conversations_to_start(session)
        to_resume = await queries.conversations_to_resume(session)
        stalled = await queries.conversations_with_expired_lease(session, now)
        unclaimed = await queries.conversations_never_taken_over(session, stale_before)
    return SweepWork(
        to_start=tuple(c.id for c in to_start),
        to_resume=tuple((c.id, c.flow_run_id) for c in to_resume if c.flow_run_id),
        orphaned=tuple(c.flow_run_id for c in [*stalled, *unclaimed] if c.flow_run_id),
    )


async def repair(db: Database, settings: Settings, work: SweepWork) -> dict[str, int]:
    counts = {"started": 0, "resumed": 0, "rescheduled": 0}
    stale_before = utcnow() - timedelta(seconds=settings.lease_seconds)
    orphaned = list(work.orphaned)
    for conversation_id in work.to_start:
        counts["started"] += int(await start_run(db, settings, conversation_id) is not None)
    for conversation_id, flow_run_id in work.to_resume:
        if await resume_run(db, conversation_id, flow_run_id, give_up_after=1):
            counts["resumed"] += 1
        else:
            orphaned.append(flow_run_id)
    for flow_run_id in orphaned:
        if await reschedule_if_orphaned(flow_run_id, stale_before):
            counts["rescheduled"] += 1
    return counts


@task(name="sweep", task_run_name="sweep: {work.summary}", cache_policy=NO_CACHE)
async def sweep(work: SweepWork) -> dict[str, int]:
    return await repair((await get_runtime()).db, get_settings(), work)


async def reschedule_if_orphaned(flow_run_id: str, stale_before: datetime) -> bool:
    """Put a run whose process died back to Scheduled; the same flow run starts again from
    the top, and cached steps plus send intents make the replay safe."""
    async with get_client() as client:
        run = await client.read_flow_run(UUID(flow_run_id))
        state = run.state
        if state is None:
            return False
        orphaned = state.type == StateType.CRASHED or (
            state.type in ORPHANABLE and state.timestamp < stale_before
        )
        if not orphaned:
            return False
        await client.set_flow_run_state(
            UUID(flow_run_id), Scheduled(name="Rescheduled"), force=True
        )
    log.warning("flow run %s lost its process (%s); rescheduled", flow_run_id, state.type.value)
    return True
