"""The safety net that makes every wake-up eventually happen.

Requests try to start or resume runs right after storing a message; this loop repairs what they
could not: conversations never started (Prefect was down), suspended runs with a message waiting
(a resume that gave up), and runs whose process died (lease expired: reschedule the same flow
run; cached steps and send intents make the replay safe).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled

from parley.db import Database, queries
from parley.db.models import utcnow
from parley.settings import Settings
from webhook.wakeups import PREFECT_UNAVAILABLE, resume_run, start_run

log = logging.getLogger(__name__)

# A run in one of these states for longer than a lease, while our row says nobody works on
# it, was claimed or run by a process that is gone.
ORPHANABLE = {StateType.RUNNING, StateType.PENDING}


async def sweep_once(db: Database, settings: Settings) -> dict[str, int]:
    counts = {"started": 0, "resumed": 0, "rescheduled": 0}
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.lease_seconds)
    async with db.read() as session:
        to_start = await queries.conversations_to_start(session)
        to_resume = await queries.conversations_to_resume(session)
        stalled = await queries.conversations_with_expired_lease(session, now)
        unclaimed = await queries.conversations_never_taken_over(session, stale_before)
    for conv in to_start:
        counts["started"] += int(await start_run(db, settings, conv.id) is not None)
    for conv in to_resume:
        assert conv.flow_run_id is not None
        if await resume_run(db, conv.id, conv.flow_run_id, give_up_after=1):
            counts["resumed"] += 1
        else:
            stalled.append(conv)
    for conv in [*stalled, *unclaimed]:
        if conv.flow_run_id and await reschedule_if_orphaned(conv.flow_run_id, stale_before):
            counts["rescheduled"] += 1
    return counts


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


async def sweep_forever(db: Database, settings: Settings) -> None:
    while True:
        try:
            counts = await sweep_once(db, settings)
            if any(counts.values()):
                log.info("sweep: %s", counts)
        except PREFECT_UNAVAILABLE as exc:
            log.warning("sweep: Prefect unavailable (%r); retrying", exc)
        except Exception:
            log.exception("sweep failed; retrying")
        await asyncio.sleep(settings.sweep_interval_seconds)
