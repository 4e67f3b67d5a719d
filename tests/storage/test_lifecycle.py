"""The campaign lifecycle on both backends: timers on a driven clock, the follow-up that a reply
makes moot, pause/resume/cancel/retry/signals through the state machine's table with
optimistic locking, campaign holds — through the executor and the dispatcher's claims, with the
loopback Graph API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.clock import DrivenClock
from parley.conversation import executor, handshake, inbox, lifecycle
from parley.conversation import operator_views as views
from parley.conversation.http_action import post_json
from parley.conversation.state_machine import Cursor
from parley.db import Database, queries
from parley.db.models import Conversation, NodeVisit
from parley.errors import InvalidInput, NotFound, TransitionNotAllowed
from parley.runtime import Runtime
from parley.settings import Settings
from parley.vocabulary import Status, WaitKind
from prefect_adapter.repairs import claim_work
from tests.storage.conftest import PHONE_ID, ROOT, USER, make_batch

FOLLOW_UP = ROOT / "examples/campaigns/follow_up.yaml"


@pytest.fixture
async def clock(tmp_path: Path) -> DrivenClock:
    return DrivenClock(tmp_path / "clock-offset")


@pytest.fixture
async def rt(db: Database, fake: FakeWhatsAppAPI, clock: DrivenClock) -> AsyncIterator[Runtime]:
    config = WhatsAppConfig(fake.api_url, "t", PHONE_ID, "app-secret", "verify", timeout_seconds=2)
    channel = WhatsAppChannel(config)
    yield Runtime(
        db=db,
        channels={"whatsapp": channel},
        post_json=post_json,
        campaigns=CampaignCache(),
        lease_seconds=5,
        reconcile_seconds=1,
        poll_seconds=0.01,
        clock=clock,
    )
    await channel.aclose()


@pytest.fixture
async def follow_up(db: Database) -> str:
    async with db.transaction() as session:
        return (await install_campaign(session, FOLLOW_UP)).name


async def _started(db: Database, rt: Runtime, campaign: str, text: str = "hi") -> int:
    await inbox.store_batch(db, make_batch(text), campaign)
    conversation_id = int((await views.list_conversations(db))[0]["id"])
    await executor.begin_run(rt, conversation_id, "00000000-0000-0000-0000-000000000001")
    return conversation_id


async def _run_until_waiting(rt: Runtime, conversation_id: int) -> Cursor:
    """What the flow does between two suspends: step while a step is due."""
    cursor = await executor.current_cursor(rt, conversation_id)
    for _ in range(40):
        due = cursor.wait is None or (
            cursor.wait.until is not None and cursor.wait.until <= rt.clock.now()
        )
        if not cursor.active or cursor.status is Status.PAUSED or not due:
            return cursor
        cursor = await executor.run_step(rt, conversation_id, cursor.step)
    raise AssertionError(f"conversation {conversation_id} never came to a wait: {cursor}")


async def _look_again(rt: Runtime, conversation_id: int) -> Cursor:
    """A resumed run's first step: re-plan whatever the wait."""
    cursor = await executor.begin_run(rt, conversation_id, None)
    if cursor.active and cursor.status is not Status.PAUSED:
        cursor = await executor.run_step(rt, conversation_id, cursor.step)
    return await _run_until_waiting(rt, conversation_id)


async def _suspend(rt: Runtime, cursor: Cursor) -> None:
    decision = await handshake.prepare_suspend(rt, cursor.conversation_id, cursor.step)
    assert decision.suspend, cursor


async def _row(db: Database, conversation_id: int) -> Conversation:
    async with db.read() as session:
        return await queries.conversations.get_conversation(session, conversation_id)


def _settings(tmp_path: Path) -> Settings:
    return Settings(lease_seconds=5, data_dir=tmp_path)


async def test_the_follow_up_walks_its_delay_and_reply_timeout_on_the_driven_clock(
    db: Database, rt: Runtime, follow_up: str, fake: FakeWhatsAppAPI, clock: DrivenClock
) -> None:
    cid = await _started(db, rt, follow_up)
    cursor = await _run_until_waiting(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("intro", WaitKind.TIMER)
    assert fake.texts_to(USER) == []  # the intro waits its 10 minutes
    clock.advance(timedelta(minutes=10))
    cursor = await _run_until_waiting(rt, cid)
    assert cursor.node == "first_wait" and cursor.wait is not None
    assert cursor.wait.kind is WaitKind.REPLY
    assert len(fake.texts_to(USER)) == 1
    clock.advance(timedelta(days=2))
    cursor = await _run_until_waiting(rt, cid)
    assert cursor.node == "second_wait"
    assert fake.texts_to(USER)[-1].startswith("Just checking in")
    history = [(v.node, v.outcome) for v in await _visits(db, cid)]
    assert history[:4] == [
        ("setup", "left"),
        ("intro", "left"),
        ("first_wait", "left"),
        ("reminder", "left"),
    ]


async def _visits(db: Database, conversation_id: int) -> list[NodeVisit]:
    async with db.read() as session:
        return await queries.visits.visits_of(session, conversation_id)


@pytest.mark.needs_postgresql  # two claims at once: SKIP LOCKED
async def test_a_timer_is_claimed_when_its_time_has_come_not_before_and_by_one_dispatcher(
    db: Database, rt: Runtime, follow_up: str, clock: DrivenClock, tmp_path: Path
) -> None:
    cid = await _started(db, rt, follow_up)
    await _suspend(rt, await _run_until_waiting(rt, cid))  # waits for the intro's delay
    settings = _settings(tmp_path)
    clock.advance(timedelta(minutes=9, seconds=59))
    early = await claim_work(rt, settings, trust_leases=True)
    assert not [r for r in early.repairs if r.kind == "wake"]
    clock.advance(timedelta(seconds=1))
    claims = await asyncio.gather(
        claim_work(rt, settings, trust_leases=True), claim_work(rt, settings, trust_leases=True)
    )
    wakes = [r for work in claims for r in work.repairs if r.kind == "wake"]
    assert [r.conversation_id for r in wakes] == [cid]  # exactly once, however many look


async def test_the_reply_that_arrives_after_a_follow_up_was_planned_stops_it(
    db: Database, rt: Runtime, follow_up: str, fake: FakeWhatsAppAPI, clock: DrivenClock
) -> None:
    """The seed's "lead replies at the worst possible moment": the timeout moved the
    conversation to the reminder, its step planned the send (intent recorded), then the lead's
    message is stored — before the provider call. The lead must not get the reminder."""
    cid = await _started(db, rt, follow_up)
    await _run_until_waiting(rt, cid)
    clock.advance(timedelta(minutes=10))
    await _run_until_waiting(rt, cid)
    clock.advance(timedelta(days=2))
    planned = await executor.plan(rt, cid, (await executor.current_cursor(rt, cid)).step)
    assert isinstance(planned, executor.PlannedStep) and planned.transition.outbound is not None
    assert planned.snapshot.current_node == "reminder"  # the timeout's move, in the same plan
    await inbox.store_batch(db, make_batch("sorry, I was away"), follow_up)
    after = await executor.perform(rt, planned)
    assert after.node == "reminder"
    cursor = await _run_until_waiting(rt, cid)
    texts = fake.texts_to(USER)
    assert not any(text.startswith("Just checking in") for text in texts)
    assert texts[-1].startswith("Thanks for your message")  # on_reply: heard_back
    assert cursor.node == "call" and cursor.wait is not None
    detail = await views.show_conversation(db, cid)
    dropped = [m for m in detail["messages"] if m["status"] == "dropped"]
    assert [m["error"] for m in dropped] == ["the contact wrote before it went out"]


async def test_a_reply_during_a_timer_wait_interrupts_it(
    db: Database, rt: Runtime, follow_up: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await _started(db, rt, follow_up)
    cursor = await _run_until_waiting(rt, cid)  # the intro's 10-minute delay
    await _suspend(rt, cursor)
    result = await inbox.store_batch(db, make_batch("hello?"), follow_up)
    assert [w.action for w in result.wakeups] == ["resume"]  # BREAK_FLOW: the run is resumed
    cursor = await _look_again(rt, cid)
    assert cursor.node == "call"
    assert fake.texts_to(USER) == [
        "Thanks for your message! Someone from the team will call you shortly."
    ]
    row = await _row(db, cid)
    assert row.wake_at is not None and row.waiting_for == WaitKind.OPERATOR  # the task's 5 days


async def test_pause_holds_a_suspended_conversation_and_resume_releases_it(
    db: Database, rt: Runtime, follow_up: str, clock: DrivenClock, tmp_path: Path
) -> None:
    cid = await _started(db, rt, follow_up)
    await _suspend(rt, await _run_until_waiting(rt, cid))
    paused = await lifecycle.pause(db, cid)
    assert (paused.status, paused.run) == (Status.PAUSED, "none")
    clock.advance(timedelta(minutes=30))
    work = await claim_work(rt, _settings(tmp_path), trust_leases=True)
    assert not work.repairs  # neither its timer nor anything else wakes a paused conversation
    inbound = await inbox.store_batch(db, make_batch("are you there?"), follow_up)
    assert inbound.wakeups == []
    resumed = await lifecycle.resume(db, cid)
    assert (resumed.status, resumed.run) == (Status.SUSPENDED, "resume")
    row = await _row(db, cid)
    assert row.wake_requested_at is not None and row.paused_by is None


async def test_a_live_run_stops_at_its_next_node_when_paused(
    db: Database, rt: Runtime, follow_up: str
) -> None:
    cid = await _started(db, rt, follow_up)
    step = (await executor.current_cursor(rt, cid)).step
    await lifecycle.pause(db, cid)  # while the run is live (its lease is held)
    cursor = await executor.run_step(rt, cid, step)
    assert (cursor.status, cursor.step, cursor.node) == (Status.PAUSED, step + 1, "setup")
    decision = await handshake.prepare_suspend(rt, cid, cursor.step)
    assert decision.suspend and (await _row(db, cid)).status is Status.PAUSED
    change = await lifecycle.resume(db, cid)
    assert change.run == "resume"
    cursor = await _look_again(rt, cid)
    assert cursor.node == "intro"


async def test_disallowed_transitions_and_unknown_ids_are_refused_and_change_nothing(
    db: Database, rt: Runtime, follow_up: str
) -> None:
    cid = await _started(db, rt, follow_up)
    with pytest.raises(TransitionNotAllowed, match="not paused"):
        await lifecycle.resume(db, cid)
    await lifecycle.cancel(db, cid, "test")
    before = await _row(db, cid)
    for command in (lifecycle.pause, lifecycle.resume, lifecycle.retry):
        with pytest.raises(TransitionNotAllowed):
            await command(db, cid)
    with pytest.raises(TransitionNotAllowed, match="cancelled"):
        await lifecycle.complete(db, cid, "too late")
    after = await _row(db, cid)
    assert (after.status, after.version) == (before.status, before.version)
    with pytest.raises(NotFound):
        await lifecycle.pause(db, 999_999)


async def test_cancel_drops_unsent_messages_and_ends_the_suspended_run(
    db: Database, rt: Runtime, follow_up: str, clock: DrivenClock
) -> None:
    cid = await _started(db, rt, follow_up)
    await _run_until_waiting(rt, cid)
    clock.advance(timedelta(minutes=10))
    cursor = await _run_until_waiting(rt, cid)
    await _suspend(rt, cursor)
    async with db.transaction() as session:  # an intent that had not gone out yet
        await queries.messages.ensure_outbound_intent(
            session, conversation_id=cid, step=99, client_ref="unsent", text="x", payload={}
        )
    change = await lifecycle.cancel(db, cid, "the lead asked us by email")
    assert (change.status, change.run) == (Status.CANCELLED, "end")
    detail = await views.show_conversation(db, cid)
    assert [m["status"] for m in detail["messages"] if m["text"] == "x"] == ["dropped"]
    assert (await _visits(db, cid))[-1].outcome == "cancelled"


async def test_retry_continues_a_failed_conversation_from_the_node_that_failed(
    db: Database, rt: Runtime, follow_up: str, fake: FakeWhatsAppAPI, clock: DrivenClock
) -> None:
    cid = await _started(db, rt, follow_up)
    await _run_until_waiting(rt, cid)
    clock.advance(timedelta(minutes=10))
    fake.fail_next(131026, 400)
    cursor = await _run_until_waiting(rt, cid)
    assert cursor.status is Status.FAILED and cursor.node == "intro"
    change = await lifecycle.retry(db, cid)
    assert (change.status, change.run) == (Status.PENDING, "start")
    cursor = await _look_again(rt, cid)
    assert cursor.node == "first_wait"
    assert any(text.endswith("get started?") for text in fake.texts_to(USER))


async def test_a_task_result_must_fit_the_node_and_wakes_the_run(
    db: Database, rt: Runtime, follow_up: str
) -> None:
    cid = await _started(db, rt, follow_up)
    await _suspend(rt, await _run_until_waiting(rt, cid))
    with pytest.raises(TransitionNotAllowed, match="no open task"):
        await lifecycle.complete_task(db, cid, {"outcome": "reached"})
    await inbox.store_batch(db, make_batch("call me"), follow_up)  # -> heard_back -> call
    await _suspend(rt, await _look_again(rt, cid))
    with pytest.raises(InvalidInput, match="outcome"):
        await lifecycle.complete_task(db, cid, {"outcome": "married"})
    with pytest.raises(InvalidInput):
        await lifecycle.signal(db, cid, "reboot", {})
    change = await lifecycle.complete_task(db, cid, {"outcome": "reached", "notes": "keen"})
    assert change.run == "resume"
    cursor = await _look_again(rt, cid)
    assert cursor.node == "thanks"
    assert (await _row(db, cid)).variables["call_result"]["notes"] == "keen"


async def test_a_signal_wakes_the_run_only_if_it_can_change_what_it_waits_for(
    db: Database, rt: Runtime, follow_up: str, clock: DrivenClock
) -> None:
    cid = await _started(db, rt, follow_up)
    await _suspend(rt, await _run_until_waiting(rt, cid))
    irrelevant = await lifecycle.signal(db, cid, "field_changed", {"company": "Acme"})
    assert irrelevant.run == "none"
    async with db.read() as session:
        contact = await queries.contacts.get_contact(session, (await _row(db, cid)).contact_id)
    assert contact.fields == {"company": "Acme"}


async def test_a_paused_campaign_holds_its_conversations_and_its_resume_releases_only_those(
    db: Database, rt: Runtime, follow_up: str
) -> None:
    cid = await _started(db, rt, follow_up)
    await _suspend(rt, await _run_until_waiting(rt, cid))
    held = await lifecycle.pause_campaign(db, follow_up, "copy review")
    assert [(c.conversation_id, c.status) for c in held.changes] == [(cid, Status.PAUSED)]
    assert (await _row(db, cid)).paused_by == "campaign"
    released = await lifecycle.resume_campaign(db, follow_up)
    assert [(c.conversation_id, c.run) for c in released.changes] == [(cid, "resume")]
    await lifecycle.pause(db, cid)  # an operator's own pause
    await lifecycle.pause_campaign(db, follow_up)
    again = await lifecycle.resume_campaign(db, follow_up)
    assert [c.status for c in again.changes] == [Status.PAUSED]
    with pytest.raises(TransitionNotAllowed, match="not paused"):
        await lifecycle.resume_campaign(db, follow_up)
    with pytest.raises(NotFound):
        await lifecycle.pause_campaign(db, "no-such-campaign")


async def test_a_campaign_paused_and_resumed_before_a_leads_first_run_starts_that_run(
    db: Database, follow_up: str
) -> None:
    """A lead stored while its campaign was being paused, before any run took it over: the
    campaign's resume used to refuse it (paused → pending was not allowed), stranding it and
    every conversation after it in the campaign."""
    await inbox.store_batch(db, make_batch("hi"), follow_up)
    cid = int((await views.list_conversations(db))[0]["id"])
    held = await lifecycle.pause_campaign(db, follow_up)
    assert [(c.conversation_id, c.status) for c in held.changes] == [(cid, Status.PAUSED)]
    released = await lifecycle.resume_campaign(db, follow_up)
    assert [(c.conversation_id, c.status, c.run) for c in released.changes] == [
        (cid, Status.PENDING, "start")
    ]
    row = await _row(db, cid)
    assert (row.status, row.paused_by, row.flow_run_id) == (Status.PENDING, None, None)


async def test_an_operator_pause_and_resume_before_the_first_run_starts_that_run(
    db: Database, follow_up: str
) -> None:
    await inbox.store_batch(db, make_batch("hi"), follow_up)
    cid = int((await views.list_conversations(db))[0]["id"])
    await lifecycle.pause(db, cid)
    resumed = await lifecycle.resume(db, cid)
    assert (resumed.status, resumed.run) == (Status.PENDING, "start")


async def test_a_running_conversation_of_a_paused_campaign_stops_at_its_next_node(
    db: Database, rt: Runtime, follow_up: str
) -> None:
    cid = await _started(db, rt, follow_up)
    await lifecycle.pause_campaign(db, follow_up)
    cursor = await executor.run_step(rt, cid, (await executor.current_cursor(rt, cid)).step)
    assert cursor.status is Status.PAUSED and cursor.node == "setup"
    row = await _row(db, cid)
    assert row.paused_by == "campaign"


@pytest.mark.needs_postgresql  # a row lock held by another session
async def test_an_operator_command_racing_a_step_retries_and_never_overwrites_it(
    db: Database, rt: Runtime, follow_up: str
) -> None:
    cid = await _started(db, rt, follow_up)
    entered = asyncio.Event()

    async def a_step_holding_the_row() -> None:
        async with db.transaction() as session:
            row = await queries.conversations.lock_conversation(session, cid)
            row.step += 1
            row.variables = {"written_by": "the step"}
            entered.set()
            await asyncio.sleep(0.3)

    step = asyncio.create_task(a_step_holding_the_row())
    await entered.wait()
    change = await lifecycle.pause(db, cid)
    await step
    row = await _row(db, cid)
    assert change.status is Status.PAUSED
    assert (row.status, row.variables, row.step) == (Status.PAUSED, {"written_by": "the step"}, 1)
