"""The safety net that makes every wake-up eventually happen.

Requests try to start or resume runs right after storing a message; this loop repairs what they
could not: conversations never started (Prefect was down), suspended runs with a message waiting
(a resume that gave up), and runs whose process died (lease expired: reschedule the same flow
run; cached steps and send intents make the replay safe).
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled

from parley.db import Database, queries
from parley.db.models import utcnow
from parley.settings import Settings
from webhook.wakeups import PREFECT_UNAVAILABLE, resume_run, start_run

log = logging.getLogger(__name__)

RESCHEDULABLE = {StateType.RUNNING, StateType.CRASHED}


async def sweep_once(db: Database, settings: Settings) -> dict[str, int]:
    counts = {"started": 0, "resumed": 0, "rescheduled": 0}
    async with db.read() as session:
        to_start = await queries.conversations_to_start(session)
        to_resume = await queries.conversations_to_resume(session)
        stalled = await queries.conversations_with_expired_lease(session, utcnow())
    for conv in to_start:
        counts["started"] += int(await start_run(db, settings, conv.id) is not None)
    for conv in to_resume:
        if conv.flow_run_id and await resume_run(db, conv.id, conv.flow_run_id, give_up_after=1):
            counts["resumed"] += 1
    for conv in stalled:
        if conv.flow_run_id and await reschedule_if_dead(conv.flow_run_id):
            counts["rescheduled"] += 1
    return counts


async def reschedule_if_dead(flow_run_id: str) -> bool:
    async with get_client() as client:
        run = await client.read_flow_run(UUID(flow_run_id))
        if run.state is None or run.state.type not in RESCHEDULABLE:
            return False
        await client.set_flow_run_state(
            UUID(flow_run_id), Scheduled(name="Rescheduled"), force=True
        )
    log.warning("flow run %s lost its process (lease expired); rescheduled", flow_run_id)
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
