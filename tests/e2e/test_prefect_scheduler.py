"""Prefect's own scheduler creates the dispatcher's runs: the schedule, not the relay, is what
keeps a dispatcher run alive (prefect 3.8.8 with SQLAlchemy 2.1 failed every scheduler pass
with "Can't evaluate bulk DML statement", so scheduled deployments got no runs at all).

No worker runs in this module: nothing but the server's scheduler service can create the runs
(no worker's kick, no dispatcher's relay), and they stay Scheduled where the test can see them.
The session's Prefect server is the one CI uses: ``prefect server start`` on PostgreSQL, its
main scheduler pass every few seconds (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun, StateType

from deployments.register import register_deployments
from flows.dispatcher import dispatcher
from parley.settings import Settings

pytestmark = pytest.mark.e2e
INTERVAL = 60.0
RECENT_WINDOW = timedelta(seconds=10)  # Prefect: recent_deployments_loop_seconds (5) + 1


def _server_log_tail(lines: int = 40) -> str:
    """The session server's log (tests/conftest.py: PREFECT_HOME and logs/ share a directory)."""
    log = Path(os.environ["PREFECT_HOME"]).parent / "logs" / "prefect-server.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


async def _runs_of(deployment_id: UUID) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            limit=200,
        )


async def _wait_for_runs(deployment_id: UUID, *, at_least: int, timeout: float) -> list[FlowRun]:
    deadline = time.monotonic() + timeout
    runs: list[FlowRun] = []
    while time.monotonic() < deadline:
        runs = await _runs_of(deployment_id)
        if len(runs) >= at_least:
            return runs
        await asyncio.sleep(0.5)
    raise AssertionError(
        f"Prefect's scheduler created {len(runs)} runs of the scheduled deployment in "
        f"{timeout:.0f} s (wanted {at_least}); the server's log ends:\n{_server_log_tail()}"
    )


async def _wait_until_not_recently_updated(deployment_id: UUID, timeout: float = 60) -> None:
    """Past the fast pass's window (updated within its 5 s loop), so only the periodic pass
    can schedule the deployment again."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            deployment = await client.read_deployment(deployment_id)
            assert deployment.updated is not None
            if datetime.now(UTC) - deployment.updated > RECENT_WINDOW:
                return
            await asyncio.sleep(0.5)
    raise AssertionError(f"deployment {deployment_id} kept being updated")


@pytest.fixture
async def deployments(prefect_server: str) -> AsyncIterator[tuple[UUID, UUID]]:
    """``(dispatcher, conversation)`` registered as ``python -m deployments.worker`` does,
    under names of their own; deleted afterwards with their runs."""
    name = f"sched-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        conversation_deployment=f"conversation/{name}",
        dispatcher_deployment=f"dispatcher/{name}",
        dispatcher_limit=f"parley-dispatcher-{name}",
        dispatcher_interval_seconds=INTERVAL,
    )
    flows = await register_deployments(settings)
    dispatcher_id = next(d for d, flow in flows.items() if flow is dispatcher)
    conversation_id = next(d for d, flow in flows.items() if flow is not dispatcher)
    yield dispatcher_id, conversation_id
    async with get_client() as client:
        for deployment_id in flows:
            for run in await _runs_of(deployment_id):
                await client.delete_flow_run(run.id)
            await client.delete_deployment(deployment_id)
        await client.delete_global_concurrency_limit_by_name(settings.dispatcher_limit)


def _assert_made_by_the_schedule(runs: list[FlowRun]) -> None:
    for run in runs:
        assert run.auto_scheduled, run
        assert run.created_by is not None and run.created_by.type == "SCHEDULE", run
        assert not {"relay", "kick"} & set(run.tags), run.tags
        assert run.state is not None and run.state.type == StateType.SCHEDULED, run.state
    starts = sorted(run.expected_start_time for run in runs if run.expected_start_time)
    assert len(starts) == len(runs)
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(starts)}
    assert gaps == {INTERVAL}, gaps


async def test_scheduled_deployment_runs_are_created_by_the_prefect_server(
    deployments: tuple[UUID, UUID],
) -> None:
    dispatcher_id, conversation_id = deployments

    # Prefect schedules at least 3 runs and at least an hour ahead: 60 runs of a 60 s interval.
    runs = await _wait_for_runs(dispatcher_id, at_least=60, timeout=120)
    _assert_made_by_the_schedule(runs)
    # The conversation deployment has no schedule: the server never starts one on its own.
    assert await _runs_of(conversation_id) == []


async def test_the_scheduler_tops_up_runs_of_a_deployment_nobody_touched(
    deployments: tuple[UUID, UUID],
) -> None:
    """Not only right after ``prefect deploy`` (the fast pass for freshly updated deployments):
    the periodic pass refills a schedule whose runs were used up, as months of uptime need."""
    dispatcher_id, _ = deployments
    first = await _wait_for_runs(dispatcher_id, at_least=60, timeout=120)
    await _wait_until_not_recently_updated(dispatcher_id)
    async with get_client() as client:
        for run in first:
            await client.delete_flow_run(run.id)

    again = await _wait_for_runs(dispatcher_id, at_least=60, timeout=120)
    _assert_made_by_the_schedule(again)
    assert not {run.id for run in first} & {run.id for run in again}
