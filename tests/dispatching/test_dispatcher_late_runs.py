"""Dispatcher runs Prefect's scheduler made while no worker was there to start them.

The scheduler keeps an hour of dispatcher runs ahead, one per interval. A worker back after
hours away finds all the missed ones due at once; started together, each would hold a worker
slot for a whole interval. Only the newest is needed: the others end at once. The runs here are
real runs of a real deployment on the session's Prefect server, driven by Prefect's flow engine
in-process as the worker drives them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow_async
from prefect.states import Pending, Scheduled
from prefect.utilities.engine import propose_state

import prefect_adapter.outreach_tick
from deployments.register import ensure_concurrency_limit
from flows import dispatcher as dispatcher_flow
from flows.conversation import conversation
from parley.runtime import Runtime
from parley.settings import Settings
from tests.dispatching.test_outreach import clock, rt  # noqa: F401

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])
INTERVAL = 10.0  # the shortest Parley allows: the newest run loops this long
LATE = {"late run left to a newer one": 1}


@pytest.fixture
async def deployment(
    prefect_server: str,
    rt: Runtime,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[UUID]:
    """A dispatcher deployment without a schedule: the test makes the runs it would have."""
    name = f"late-{uuid4().hex[:8]}"
    settings = Settings(
        conversation_deployment=f"conversation/{name}",  # the ticks look for its failed runs
        dispatcher_deployment=f"dispatcher/{name}",
        dispatcher_limit=f"parley-dispatcher-{name}",
        dispatcher_interval_seconds=INTERVAL,
        dispatcher_tick_seconds=1.0,
    )
    applied = await dispatcher_flow.dispatcher.ato_deployment(name=name)
    deployment_id: UUID = await applied.aapply()  # type: ignore[union-attr]
    conversations = await conversation.ato_deployment(name=name)
    conversation_id: UUID = await conversations.aapply()  # type: ignore[union-attr]
    await ensure_concurrency_limit(settings.dispatcher_limit, limit=1)

    async def the_runtime() -> Runtime:
        return rt

    monkeypatch.setattr(dispatcher_flow, "get_settings", lambda: settings)
    monkeypatch.setattr(dispatcher_flow, "get_runtime", the_runtime)
    monkeypatch.setattr(prefect_adapter.outreach_tick, "_signal", None)  # this test's own LISTEN
    yield deployment_id
    async with get_client() as client:
        for run in await _runs_of(deployment_id):
            await client.delete_flow_run(run.id)
        await client.delete_deployment(deployment_id)
        await client.delete_deployment(conversation_id)
        await client.delete_global_concurrency_limit_by_name(settings.dispatcher_limit)


async def _runs_of(deployment_id: UUID) -> list[FlowRun]:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            limit=50,
        )


async def _due(deployment_id: UUID, intervals_ago: float) -> FlowRun:
    """A run the schedule made for ``intervals_ago`` intervals back."""
    at = datetime.now(UTC) - timedelta(seconds=intervals_ago * INTERVAL)
    async with get_client() as client:
        return await client.create_flow_run_from_deployment(
            deployment_id, state=Scheduled(scheduled_time=at)
        )


async def _drive(run: FlowRun) -> tuple[Any, float]:
    """Claim (Pending) and run the flow run in-process, as the worker does; the result and how
    long it took."""
    async with get_client() as client:
        assert (await propose_state(client, Pending(), flow_run_id=run.id)).is_pending()
        claimed = await client.read_flow_run(run.id)
    started = time.monotonic()
    result = await run_flow_async(dispatcher_flow.dispatcher, flow_run=claimed)
    return result, time.monotonic() - started


async def test_dispatcher_runs_missed_while_the_worker_was_away_end_at_once_but_the_newest(
    deployment: UUID,
) -> None:
    missed = [await _due(deployment, ago) for ago in (3.0, 2.0)]
    newest = await _due(deployment, 0.2)

    for run in missed:
        result, took = await _drive(run)
        assert result == LATE
        assert took < INTERVAL, took
    # The newest is still due, so the late ones relayed to nothing.
    assert {run.id for run in await _runs_of(deployment)} == {*(r.id for r in missed), newest.id}

    result, took = await _drive(newest)
    assert "late run left to a newer one" not in result
    assert took >= INTERVAL * 0.9, took  # it looped its interval, ticking


async def test_a_late_dispatcher_run_with_no_newer_one_relays_to_a_fresh_run(
    deployment: UUID,
) -> None:
    """No newer run to leave the work to (the schedule paused, runs deleted): the late run still
    ends at once, but never leaves the installation without a dispatcher."""
    late = await _due(deployment, 3.0)
    result, took = await _drive(late)
    assert result == LATE and took < INTERVAL

    [relayed] = [run for run in await _runs_of(deployment) if run.id != late.id]
    assert "relay" in relayed.tags
    assert relayed.expected_start_time is not None
    assert abs((datetime.now(UTC) - relayed.expected_start_time).total_seconds()) < INTERVAL
