"""A lead import on a real stack (worker, webhook, dispatcher, Prefect server): 30 leads posted
to ``POST /api/conversations/bulk`` are all created at once, pending, and the dispatcher starts
their runs a few at a time (``PARLEY_RUN_STARTS_PER_SECOND``), never all at once; a single
lead started over the REST API meanwhile gets its run at once, ahead of the import's queue."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from parley.db import Database
from parley.db.models import Conversation
from parley.vocabulary import Status
from tests.e2e.conftest import API_KEY, E2EStack

pytestmark = pytest.mark.e2e

LEADS = 30
CAMPAIGN = """
name: slow-burn
channel: linkedin
inputs: [first_name]
start: cool_off
nodes:
  - {id: cool_off, type: wait, duration: 1d}
  - {id: done, type: end}
edges:
  - {from: cool_off, to: done}
"""


@pytest.fixture(scope="module")
def import_stack(stack_factory: Any) -> E2EStack:
    stack: E2EStack = stack_factory(
        "postgresql",
        hot_wait=0.5,
        extra_env={"PARLEY_RUN_STARTS_PER_SECOND": "2", "PARLEY_DISPATCHER_TICK_SECONDS": "0.5"},
    )
    return stack


async def _imported_with_a_run(db: Database) -> tuple[int, int]:
    """(imported conversations with a flow run, imported ones suspended at their wait)."""
    async with db.read() as session:
        with_run = await session.scalar(
            select(func.count()).where(
                Conversation.import_id.is_not(None), Conversation.flow_run_id.is_not(None)
            )
        )
        waiting = await session.scalar(
            select(func.count()).where(
                Conversation.import_id.is_not(None), Conversation.status == Status.SUSPENDED
            )
        )
    return int(with_run or 0), int(waiting or 0)


async def test_an_imports_runs_are_started_by_the_dispatcher_a_few_at_a_time(
    import_stack: E2EStack,
) -> None:
    stack = import_stack
    async with httpx.AsyncClient(timeout=60) as client:
        published = await client.post(
            f"http://127.0.0.1:{stack.webhook_port}/api/campaigns?activate=true",
            content=CAMPAIGN.encode(),
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert published.status_code in (200, 201), published.text
    seat = await stack.api("POST", "/api/identities", {"channel": "linkedin", "address": "s1"})
    assert seat.status_code == 201, seat.text
    identity_id = seat.json()["id"]
    rows = [
        {"linkedin": f"https://www.linkedin.com/in/bulk-{n}", "first_name": f"Lead{n}"}
        for n in range(LEADS)
    ]

    posted = await stack.api(
        "POST",
        "/api/conversations/bulk",
        {"campaign": "slow-burn", "identity_id": identity_id, "rows": rows},
    )
    assert posted.status_code == 202, posted.text
    import_id = posted.json()["import_id"]

    db = Database(stack.db_url)
    try:
        seen: list[int] = []
        single: dict[str, Any] | None = None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            with_run, waiting = await _imported_with_a_run(db)
            seen.append(with_run)
            if single is None and 0 < with_run < LEADS // 2:
                started = await stack.api(
                    "POST",
                    "/api/conversations",
                    {
                        "campaign": "slow-burn",
                        "identity_id": identity_id,
                        "address": "https://www.linkedin.com/in/single",
                        "variables": {"first_name": "Solo"},
                    },
                )
                assert started.status_code == 201, started.text
                single = started.json()
                single["imported_then"] = (await _imported_with_a_run(db))[0]
            if waiting == LEADS:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"the import's runs never all started: {seen[-5:]}")
        report = (await stack.api("GET", f"/api/imports/{import_id}")).json()
    finally:
        await db.dispose()

    assert report["counts"] == {"started": LEADS}
    assert report["runs_started"] == LEADS
    between = {n for n in seen if 0 < n < LEADS}
    assert len(between) >= 5, f"runs started in a few big jumps, not paced: {sorted(set(seen))}"
    assert single is not None
    # The single lead's run was created in its own request, while the import was still queued.
    assert single["run"] == "start" and single["run_reached"] is True
    assert single["imported_then"] < LEADS
