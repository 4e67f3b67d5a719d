"""A live run that someone else marks Cancelled (the dispatcher's sweep finishing a Cancelling
run, another worker) before its own worker sees the Cancelling: the worker stops it, and the
run stays Cancelled in Prefect. Prefect's engine reports a stopped run as Crashed, forced over
the Cancelled; with the scheduler making dispatcher runs, the sweep wins that race more often."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

from devkit.stack.demo import GREETING
from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e


async def _stopped_at(flow_run_id: UUID, timeout: float = 30) -> datetime:
    """When the worker stopped the run: its wait task run's end (Crashed, cancelled under it)."""
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            ended = [t.end_time for t in task_runs if t.name.startswith("wait-for-reply")]
            if ended and ended[0] is not None:
                return ended[0]
            await asyncio.sleep(0.2)
    raise AssertionError(f"the worker never stopped run {flow_run_id}")


async def test_a_live_run_cancelled_by_the_sweep_before_its_worker_looks_stays_cancelled(
    pg_stack: E2EStack,
) -> None:
    user = pg_stack.user("Ria")
    assert await user.say("Hi") == [GREETING]
    detail = await pg_stack.wait_for_status(user, "hot")
    run_id = UUID(detail["flow_run_id"])
    async with get_client() as client:  # what the sweep does to a Cancelling run
        await client.set_flow_run_state(run_id, Cancelled(), force=True)
    stopped = await _stopped_at(run_id)
    await pg_stack.wait_for_status(user, "cancelled", timeout=15)

    deadline = time.monotonic() + 15
    state = None
    async with get_client() as client:
        while time.monotonic() < deadline:
            state = (await client.read_flow_run(run_id)).state
            if state and state.type == StateType.CANCELLED and state.timestamp >= stopped:
                break
            await asyncio.sleep(0.2)
    assert state is not None and state.type == StateType.CANCELLED, state
    assert state.timestamp >= stopped, (state.timestamp, stopped)
    assert pg_stack.fake.texts_to(user.phone) == [GREETING]
