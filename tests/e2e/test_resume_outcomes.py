"""What a resume attempt learns from the real Prefect server, in one API call: resumed, not
paused (yet, or any more: the caller retries or reads the state) or gone (the run does not exist:
the dispatcher re-homes the conversation)."""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from prefect_adapter.runs import ResumeOutcome, resume_once

pytestmark = pytest.mark.e2e


@flow(name="parley-test-never-paused")
def _never_paused() -> None:
    """Only its flow run is created; nothing runs it."""


async def test_resuming_a_run_that_is_not_paused_says_so_and_leaves_it_as_it_was(
    prefect_server: str,
) -> None:
    async with get_client() as client:
        run = await client.create_flow_run(_never_paused)  # Pending: created, never started
        outcome = await resume_once(str(run.id), 1, reason="message")
        after = await client.read_flow_run(run.id)
    assert outcome is ResumeOutcome.NOT_PAUSED
    assert after.state is not None and after.state.is_pending()


async def test_resuming_a_run_prefect_does_not_know_says_it_is_gone(prefect_server: str) -> None:
    assert await resume_once(str(uuid4()), 1, reason="message") is ResumeOutcome.GONE
