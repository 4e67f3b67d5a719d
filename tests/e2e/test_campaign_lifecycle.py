"""The follow-up campaign end to end on a driven clock: real worker, webhook, dispatcher and
Prefect server; days pass by moving the shared clock file, never by sleeping. Timers resume
suspended runs through the dispatcher, a person completes a task over the REST API, and an
operator pauses, resumes and cancels a suspended run with the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.flow_runs import aresume_flow_run
from prefect.input.run_input import keyset_from_paused_state

from devkit.fakes.whatsapp_user import WhatsAppUser
from parley.clock import DrivenClock
from tests.e2e.conftest import API_KEY, ROOT, E2EStack

FOLLOW_UP = ROOT / "examples" / "campaigns" / "follow_up.yaml"


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> DrivenClock:
    return DrivenClock(tmp_path_factory.mktemp("clock") / "offset")


@pytest.fixture(scope="module")
def follow_up_stack(stack_factory: Any, clock: DrivenClock) -> E2EStack:
    return stack_factory(  # type: ignore[no-any-return]
        "postgresql",
        hot_wait=1.0,
        campaign=FOLLOW_UP,
        extra_env={"PARLEY_CLOCK_FILE": str(clock.path)},
    )


async def _at(
    stack: E2EStack, user: WhatsAppUser, node: str, status: str = "suspended", timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    detail: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            detail = await stack.conversation_of(user)
        except AssertionError:
            detail = {}
        if detail.get("current_node") == node and detail.get("status") == status:
            return detail
        await asyncio.sleep(0.1)
    seen = (detail.get("current_node"), detail.get("status"))
    raise AssertionError(f"{user.phone} never {status} at {node!r}; last seen {seen}")


def _travel_to(clock: DrivenClock, detail: dict[str, Any]) -> None:
    """Move every process's clock to the moment the conversation's wait ends."""
    wake_at = datetime.fromisoformat(detail["wake_at"])
    clock.advance(max(timedelta(0), wake_at - clock.now()) + timedelta(seconds=1))


async def _api(stack: E2EStack, method: str, path: str, body: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(
            method,
            f"http://127.0.0.1:{stack.webhook_port}/api{path}",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )


def _parley(stack: E2EStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env}
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_follow_up_runs_for_days_of_driven_time_through_timers_a_task_and_replies(
    follow_up_stack: E2EStack, clock: DrivenClock
) -> None:
    stack, user = follow_up_stack, follow_up_stack.user("Lead")
    await user.say("I signed up", expect=0)
    waiting = await _at(stack, user, "intro")  # its 10-minute delay: suspended, no process
    assert waiting["waiting_for"] == "timer"
    assert stack.fake.texts_to(user.phone) == []
    _travel_to(clock, waiting)
    assert "quick call" in (await user.wait_for_bot(1, 30))[0]
    first_wait = await _at(stack, user, "first_wait")
    _travel_to(clock, first_wait)  # two days without an answer
    assert (await user.wait_for_bot(1, 30))[0].startswith("Just checking in")
    await _at(stack, user, "second_wait")
    await user.say("yes, please call me", expect=0)
    call = await _at(stack, user, "call")
    assert call["waiting_for"] == "operator"
    bad = await _api(stack, "POST", f"/conversations/{call['id']}/task", {"outcome": "maybe"})
    assert bad.status_code == 422 and "outcome" in bad.text
    done = await _api(stack, "POST", f"/conversations/{call['id']}/task", {"outcome": "reached"})
    assert done.status_code == 200, done.text
    thanks = await _at(stack, user, "thanks")  # an end node with a 1 h delay
    _travel_to(clock, thanks)
    assert (await user.wait_for_bot(1, 30))[0].startswith("Thanks for taking the time")
    ended = await stack.wait_for_status(user, "completed")
    visited = [visit["node"] for visit in ended["history"]]
    assert visited == [
        "setup",
        "intro",
        "first_wait",
        "reminder",
        "second_wait",
        "route_reply",
        "call",
        "thanks",
    ]
    deadline = time.monotonic() + 30  # the row says completed a moment before the run ends
    while True:
        async with get_client() as client:
            run = await client.read_flow_run(ended["flow_run_id"])
        if (run.state is not None and run.state.is_final()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert run.state is not None and run.state.is_completed()


async def test_a_reply_during_a_timer_wait_interrupts_it_and_the_task_is_done_in_the_ui(
    follow_up_stack: E2EStack,
) -> None:
    stack, user = follow_up_stack, follow_up_stack.user("Impatient")
    await user.say("hello", expect=0)
    await _at(stack, user, "intro")
    answers = await user.say("anyone there?", expect=1)  # BREAK_FLOW: on_reply -> heard_back
    assert answers[0].startswith("Thanks for your message")
    detail = await _at(stack, user, "call")
    assert detail["waiting_for"] == "operator"
    await _complete_in_the_prefect_ui(detail["flow_run_id"], {"outcome": "voicemail"})
    note = await _at(stack, user, "voicemail_note")  # its 5-minute delay
    assert note["variables"]["call_result"]["outcome"] == "voicemail"
    assert note["task_result"] is None  # a new node: the result is in its variable now


async def _complete_in_the_prefect_ui(flow_run_id: str, answer: dict[str, Any]) -> None:
    """What the Resume dialog does: it shows the form saved with the pause (the task's
    outcomes as a choice) and resumes the run with what the person filled in."""
    async with get_client() as client:
        deadline = time.monotonic() + 30  # the row says suspended a moment before Prefect does
        while True:
            run = await client.read_flow_run(UUID(flow_run_id))
            if run.state is not None and run.state.is_paused():
                break
            assert time.monotonic() < deadline, run.state
            await asyncio.sleep(0.2)
        keyset = keyset_from_paused_state(run.state)
        while True:  # Prefect saves the form (schema, then description) after Paused shows
            try:
                schema = await client.read_flow_run_input(UUID(flow_run_id), keyset["schema"])
                description = await client.read_flow_run_input(
                    UUID(flow_run_id), keyset["description"]
                )
                break
            except PrefectHTTPStatusError:
                assert time.monotonic() < deadline, "the pause's form was never saved"
                await asyncio.sleep(0.2)
    assert json.loads(schema)["properties"]["outcome"]["anyOf"][0]["enum"] == [
        "reached",
        "voicemail",
        "no_answer",
    ]
    assert "Call the lead back" in description
    await aresume_flow_run(UUID(flow_run_id), run_input=answer)


async def test_an_operator_pauses_resumes_and_cancels_a_suspended_run_with_the_cli(
    follow_up_stack: E2EStack, clock: DrivenClock
) -> None:
    stack, user = follow_up_stack, follow_up_stack.user("Held")
    await user.say("hi there", expect=0)
    waiting = await _at(stack, user, "intro")
    conversation_id = str(waiting["id"])
    paused = _parley(stack, "conversations", "pause", conversation_id, "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["status"] == "paused"
    _travel_to(clock, waiting)  # its timer passes while it is paused: nothing happens
    await asyncio.sleep(3)
    assert stack.fake.texts_to(user.phone) == []
    assert (await stack.conversation_of(user))["status"] == "paused"
    resumed = _parley(stack, "conversations", "resume", conversation_id)
    assert resumed.returncode == 0, resumed.stderr
    assert "quick call" in (await user.wait_for_bot(1, 30))[0]  # the dispatcher resumed it
    await _at(stack, user, "first_wait")
    cancelled = _parley(stack, "conversations", "cancel", conversation_id, "--reason", "opt-out")
    assert cancelled.returncode == 0, cancelled.stderr
    detail = await stack.wait_for_status(user, "cancelled")
    refused = _parley(stack, "conversations", "resume", conversation_id)
    assert refused.returncode == 1 and "cancelled" in refused.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the dispatcher resumed the run, which finished
        async with get_client() as client:
            run = await client.read_flow_run(detail["flow_run_id"])
        if run.state is not None and run.state.is_final():
            break
        await asyncio.sleep(0.5)
    assert run.state is not None and run.state.is_cancelled(), run.state
    unknown = _parley(stack, "conversations", "pause", "987654")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr


async def test_a_paused_campaign_holds_new_and_waiting_conversations_until_resumed(
    follow_up_stack: E2EStack, clock: DrivenClock
) -> None:
    stack, user = follow_up_stack, follow_up_stack.user("Campaign")
    await user.say("hi", expect=0)
    waiting = await _at(stack, user, "intro")
    held = await _api(stack, "POST", "/campaigns/follow-up/pause", {"reason": "copy review"})
    assert held.status_code == 200, held.text
    _travel_to(clock, waiting)
    await asyncio.sleep(3)
    assert stack.fake.texts_to(user.phone) == []
    resumed = await _api(stack, "POST", "/campaigns/follow-up/resume")
    assert resumed.status_code == 200, resumed.text
    assert "quick call" in (await user.wait_for_bot(1, 30))[0]
    missing = await _api(stack, "POST", "/campaigns/no-such/pause")
    assert missing.status_code == 404


async def test_a_live_chat_paused_mid_conversation_stops_and_carries_on_after_resume(
    pg_stack: E2EStack,
) -> None:
    """Paused while its run waits hot: the run stops at its next node and suspends; after the
    resume it goes on at the node it stopped at (not at a stale cached "paused" step)."""
    stack, user = pg_stack, pg_stack.user("Paula")
    assert (await user.say("hi"))[0] == "Hi, welcome aboard! What's your name?"
    detail = await stack.conversation_of(user)
    paused = await _api(stack, "POST", f"/conversations/{detail['id']}/pause")
    assert paused.status_code == 200, paused.text
    await stack.wait_for_status(user, "paused")
    await user.say("Paula", expect=0)  # stored; a paused conversation is not woken
    await asyncio.sleep(2)
    assert len(stack.fake.texts_to(user.phone)) == 1
    resumed = await _api(stack, "POST", f"/conversations/{detail['id']}/resume")
    assert resumed.status_code == 200, resumed.text
    assert (await user.wait_for_bot(1, 30))[
        0
    ] == "Nice to meet you, Paula! What's your email address?"
    again = await _api(stack, "POST", f"/conversations/{detail['id']}/resume")
    assert again.status_code == 409 and "not paused" in again.text
