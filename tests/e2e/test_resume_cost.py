"""Resuming a conversation costs the same at turn 8 as at turn 2: the run loads its cursor from
the database and goes on, instead of re-walking (even cached) earlier steps.

Measured as work, not time: the Prefect task runs each resumed attempt of the flow run creates
(grouped by the attempt, ``flow_run_run_count``, that created them)."""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from tests.e2e.conftest import E2EStack

pytestmark = pytest.mark.e2e
ECHO = Path(__file__).parent / "fixtures" / "echo.yaml"
KINDS = ("begin-run", "step", "wait-for-reply", "prepare-suspend")
TURNS = 8


async def _work_per_attempt(flow_run_id: str) -> dict[int, Counter[str]]:
    """Task runs grouped by the attempt (start, then each resume) of the flow run they ran in:
    an attempt begins at each of the flow run's Running states."""
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
            limit=200,
        )
        states = await client.read_flow_run_states(UUID(flow_run_id))
    starts = sorted(state.timestamp for state in states if state.is_running())
    attempts: dict[int, Counter[str]] = {}
    for run in runs:
        kind = next(k for k in KINDS if run.name.startswith(k))
        began = run.start_time or run.created
        assert began is not None
        attempt = bisect_right(starts, began)
        attempts.setdefault(attempt, Counter())[kind] += 1
    return attempts


async def test_resume_cost_does_not_grow_with_the_number_of_earlier_turns(
    stack_factory: Any,
) -> None:
    stack: E2EStack = stack_factory("postgresql", hot_wait=0, campaign=ECHO)
    user = stack.user("Judy")
    assert await user.say("hello") == ["Say something (or quit)."]
    for turn in range(1, TURNS + 1):
        await stack.wait_for_status(user, "suspended")
        answers = await user.say(f"m{turn}", expect=2)
        assert answers == [f"You said m{turn}.", "Say something (or quit)."]
    await stack.wait_for_status(user, "suspended")
    assert await user.say("quit") == ["Bye!"]
    detail = await stack.wait_for_status(user, "completed")

    attempts: dict[int, Counter[str]] = {}
    for _ in range(50):  # task runs are recorded asynchronously; let the last ones land
        attempts = await _work_per_attempt(detail["flow_run_id"])
        if len(attempts) == TURNS + 2 and attempts[max(attempts)]["step"] == 1:
            break
        await asyncio.sleep(0.2)
    resumed_turns = [attempts[n] for n in sorted(attempts)[1:-1]]
    assert len(resumed_turns) == TURNS
    # Each resume runs exactly this turn's two step tasks (the reply read and the echo sent,
    # one task as the read is a quiet step; then the prompt) and never an earlier step, not
    # even as a cache hit ...
    assert [turn["step"] for turn in resumed_turns] == [2] * TURNS, resumed_turns
    assert all(turn["begin-run"] == 1 for turn in resumed_turns), resumed_turns
    # ... so the whole work of a late resume is no more than that of an early one.
    totals = [sum(turn.values()) for turn in resumed_turns]
    assert max(totals[-3:]) <= max(totals[:3]), resumed_turns
