"""A queued action is never silently lost: not to a pause over the weekend (the conversation's
or its campaign's), nor to a person taking the conversation over with a manual send. On SQLite
and PostgreSQL, with the dispatcher's own functions, the loopback LinkedIn gateway counting
what it received, and the driven clock; the conversation's run is driven step by step as the
worker would (``_look_again``: what the resumed run does)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley.campaign.registry import install_campaign
from parley.clock import DrivenClock
from parley.conversation import executor, handshake, lifecycle
from parley.db import Database, queries
from parley.outreach import dispatch, identities
from parley.runtime import Runtime
from parley.settings import get_settings
from parley.vocabulary import Status, WaitKind
from tests.dispatching.test_outreach import (  # the outreach scenarios' fixtures and helpers
    _actions,
    _identity,
    _lead,
    _look_again,
    _seeded,
    _until_waiting,
    campaign,
    clock,
    gateway,
    rt,
)

__all__ = ["campaign", "clock", "gateway", "rt"]  # fixtures, used by name

FRIDAY_16 = datetime(2026, 12, 11, 16, 0, tzinfo=UTC)
FRIDAY_1701 = datetime(2026, 12, 11, 17, 1, tzinfo=UTC)
SATURDAY_10 = datetime(2026, 12, 12, 10, 0, tzinfo=UTC)
MONDAY_0905 = datetime(2026, 12, 14, 9, 5, tzinfo=UTC)
MONDAY_11 = datetime(2026, 12, 14, 11, 0, tzinfo=UTC)
TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


def _at(clock: DrivenClock, moment: datetime) -> None:
    clock.set_offset(moment - datetime.now(UTC))


def _invitations(gateway: FakeLinkedInGateway) -> list[str]:
    return [a.idempotency_key for a in gateway.performed if a.kind == "invitation"]


async def _lead_with_run(
    db: Database, rt: Runtime, campaign: str, identity_id: int, n: int = 1
) -> int:
    """A lead whose conversation has its flow run (the worker's), as every started one has."""
    cid = await _lead(db, rt, campaign, identity_id, n)
    await executor.begin_run(rt, cid, str(uuid4()))
    return cid


async def _asleep(rt: Runtime, conversation_id: int) -> None:
    """The run suspends at its wait (no process, no lease), as the worker's run does."""
    cursor = await _until_waiting(rt, conversation_id)
    decision = await handshake.prepare_suspend(rt, conversation_id, cursor.step)
    assert decision.suspend, cursor


async def _row(db: Database, conversation_id: int) -> Any:
    async with db.read() as session:
        return await queries.conversations.get_conversation(session, conversation_id)


async def _invitation_queued_friday_evening(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> tuple[int, int]:
    """Friday 16:00 the profile is visited and the invitation queued; at 17:01 the dispatcher
    puts it off to Monday 09:00 (outside working hours); the run sleeps waiting for it."""
    identity_id = await _identity(db, gateway)
    _at(clock, FRIDAY_16)
    cid = await _lead_with_run(db, rt, campaign, identity_id)
    await _until_waiting(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"  # the visit
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("connect", WaitKind.ACTION)
    await _asleep(rt, cid)
    _at(clock, FRIDAY_1701)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "waiting"
    return identity_id, cid


async def _resumed_sends_the_invitation_once(
    db: Database,
    rt: Runtime,
    gateway: FakeLinkedInGateway,
    identity_id: int,
    cid: int,
    key: str,
) -> None:
    """After the release: the run looks again and keeps waiting at the node; the dispatcher
    performs the same action (same key) within the hours, and its outcome moves the run on."""
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("connect", WaitKind.ACTION)
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=5) == ["sent", "idle"]
    assert _invitations(gateway) == [key]
    [_, invitation] = await _actions(db, identity_id)
    assert (invitation.idempotency_key, invitation.status, invitation.outcome) == (
        key,
        "done",
        "sent",
    )
    assert invitation.performed_at is not None and invitation.performed_at >= MONDAY_11
    cursor = await _look_again(rt, cid)
    assert cursor.node == "wait_accept" and cursor.status is not Status.PAUSED


async def test_conversation_paused_over_the_weekend_sends_its_invitation_after_resume(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id, cid = await _invitation_queued_friday_evening(db, rt, campaign, gateway, clock)
    _at(clock, SATURDAY_10)
    await lifecycle.pause(db, cid)
    _at(clock, MONDAY_0905)  # the hours open while it is still paused: held, not skipped
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=5) == ["held", "idle"]
    [_, invitation] = await _actions(db, identity_id)
    assert (invitation.status, invitation.queue, invitation.outcome) == ("queued", "paused", None)
    assert invitation.attempts == 0  # held: not an attempt
    row = await _row(db, cid)
    assert (row.status, row.task_result) == (Status.PAUSED, None)  # no outcome handed over
    assert _invitations(gateway) == []
    shown = await identities.explain(db, identity_id, clock=clock)
    assert shown["queued"] == {"ready": 0, "parked": 0, "held": 1}
    _at(clock, MONDAY_11)
    change = await lifecycle.resume(db, cid)
    assert change.run == "resume" and "1 held action(s) back in the queue" in change.detail
    await _resumed_sends_the_invitation_once(
        db, rt, gateway, identity_id, cid, invitation.idempotency_key
    )


async def test_campaign_paused_over_the_weekend_sends_its_invitation_after_resume(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id, cid = await _invitation_queued_friday_evening(db, rt, campaign, gateway, clock)
    _at(clock, SATURDAY_10)
    await lifecycle.pause_campaign(db, campaign, "weekend")
    _at(clock, MONDAY_0905)
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=5) == ["held", "idle"]
    [_, invitation] = await _actions(db, identity_id)
    assert (invitation.queue, invitation.reason) == ("paused", "held: the conversation is paused")
    assert _invitations(gateway) == []
    _at(clock, MONDAY_11)
    [change] = (await lifecycle.resume_campaign(db, campaign)).changes
    assert change.run == "resume"
    await _resumed_sends_the_invitation_once(
        db, rt, gateway, identity_id, cid, invitation.idempotency_key
    )


async def test_campaign_paused_while_its_run_was_still_live_holds_the_action_at_the_gate(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    """The campaign's pause holds only sleeping conversations at once; one whose run had just
    queued the invitation is held by the dispatcher, as its run's next step would be."""
    identity_id = await _identity(db, gateway)
    _at(clock, TUESDAY_10)
    cid = await _lead_with_run(db, rt, campaign, identity_id)
    await _until_waiting(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    await _look_again(rt, cid)  # the run is live (running), the invitation queued
    assert (await lifecycle.pause_campaign(db, campaign)).changes == ()
    assert (await _row(db, cid)).status is Status.RUNNING
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "held"
    assert _invitations(gateway) == []
    row = await _row(db, cid)
    assert (row.status, row.paused_by) == (Status.PAUSED, "campaign")
    [_, invitation] = await _actions(db, identity_id)
    assert (invitation.queue, invitation.reason) == ("paused", "held: its campaign is paused")
    await handshake.prepare_suspend(rt, cid, row.step)  # the run reaches its suspend
    [change] = (await lifecycle.resume_campaign(db, campaign)).changes
    assert change.run == "resume" and "back in the queue" in change.detail
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert _invitations(gateway) == [invitation.idempotency_key]
    assert (await _look_again(rt, cid)).node == "wait_accept"


async def test_a_pause_taken_while_the_invitation_is_on_its_way_keeps_its_outcome(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    """The freshness check passed under the row lock and the call is out when the operator
    pauses: the invitation is not taken back, its outcome waits in the paused conversation,
    and the resumed run moves on with it — sent once, never again."""
    identity_id = await _identity(db, gateway)
    _at(clock, TUESDAY_10)
    cid = await _lead_with_run(db, rt, campaign, identity_id)
    await _until_waiting(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    await _look_again(rt, cid)
    await _asleep(rt, cid)
    gateway.hold_next(3.0)  # the gateway answers late: the pause comes in meanwhile
    performing = asyncio.create_task(dispatch.perform_next(rt, identity_id, _seeded()))
    assert await asyncio.to_thread(gateway.wait_for_actions, 2, 10.0)
    assert not performing.done()
    await lifecycle.pause(db, cid)
    assert await performing == "sent"
    row = await _row(db, cid)
    assert row.status is Status.PAUSED and (row.task_result or {}).get("outcome") == "sent"
    await lifecycle.resume(db, cid)
    assert (await _look_again(rt, cid)).node == "wait_accept"
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"
    assert len(_invitations(gateway)) == 1


async def test_a_paused_conversation_cancelled_never_sends_its_held_action(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id, cid = await _invitation_queued_friday_evening(db, rt, campaign, gateway, clock)
    await lifecycle.pause(db, cid)
    _at(clock, MONDAY_0905)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "held"
    await lifecycle.cancel(db, cid, "lead asked us to stop", clock)
    [_, invitation] = await _actions(db, identity_id)
    assert (invitation.status, invitation.outcome) == ("done", "skipped")
    assert invitation.reason == "conversation cancelled: lead asked us to stop"
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"
    assert _invitations(gateway) == []


# --- a person takes over, then the sequence goes on ----------------------------------------


async def _visit_queued(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> tuple[int, int]:
    identity_id = await _identity(db, gateway)
    _at(clock, TUESDAY_10)
    cid = await _lead_with_run(db, rt, campaign, identity_id)
    await _asleep(rt, cid)  # waiting for its profile visit
    return identity_id, cid


async def _sequence_went_on(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, identity_id: int, cid: int
) -> None:
    """The resumed run leaves the taken-over visit by its edge and queues the invitation, which
    the dispatcher sends; the visit itself never went out."""
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("connect", WaitKind.ACTION)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert [a.kind for a in gateway.performed] == ["message", "invitation"]
    visit, manual, invitation = await _actions(db, identity_id)
    assert (visit.outcome, visit.reason) == ("skipped", dispatch.TAKEN_OVER_REASON)
    assert (manual.outcome, invitation.outcome) == ("sent", "sent")
    assert (await _look_again(rt, cid)).node == "wait_accept"
    async with db.read() as session:
        visits = await queries.visits.visits_of(session, cid)
    assert [v.node for v in visits][:3] == ["visit", "connect", "wait_accept"]


async def test_hand_sent_message_then_resume_moves_sequence_on(
    db: Database,
    rt: Runtime,
    campaign: str,
    gateway: FakeLinkedInGateway,
    clock: DrivenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``parley send`` then ``parley conversations resume``, as README tells the operator."""
    from typer.testing import CliRunner

    from parley.cli import app

    identity_id, cid = await _visit_queued(db, rt, campaign, gateway, clock)
    monkeypatch.setenv("PARLEY_DATABASE_URL", db.url)
    monkeypatch.setenv("PARLEY_CLOCK_FILE", str(clock.path))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        send = ["send", str(cid), "--text", "Hi, it's Ana from Parley"]
        sent = await asyncio.to_thread(runner.invoke, app, send)
        assert sent.exit_code == 0, sent.output
        row = await _row(db, cid)
        assert row.status is Status.PAUSED
        assert (row.task_result or {}).get("outcome") == "taken_over"
        resume = ["conversations", "resume", str(cid)]
        resumed = await asyncio.to_thread(runner.invoke, app, resume)
        assert resumed.exit_code == 0, resumed.output
    finally:
        get_settings.cache_clear()
    await _sequence_went_on(db, rt, gateway, identity_id, cid)


async def test_hand_sent_message_over_rest_then_resume_moves_sequence_on(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    """``POST /api/conversations/{id}/send`` then ``POST /api/conversations/{id}/resume``."""
    from parley.settings import Settings
    from tests.operator_api import API_KEY, operator_api
    from webhook import deps
    from webhook.routes import api as api_routes
    from webhook.routes import sending as sending_routes

    identity_id, cid = await _visit_queued(db, rt, campaign, gateway, clock)

    async def runtime() -> Runtime:
        return rt

    settings = Settings(api_keys=API_KEY, api_run_wait_seconds=5)
    async with operator_api(
        db,
        sending_routes.router,
        api_routes.router,
        settings=settings,
        overrides={deps._runtime: runtime},
    ) as api:
        sent = await api.post(f"/api/conversations/{cid}/send", json={"text": "Hi from Ana"})
        assert sent.status_code == 200, sent.text
        assert sent.json()["sent"] is True
        again = await api.post(f"/api/conversations/{cid}/send", json={"text": "   "})
        assert again.status_code == 422  # a refusal changes nothing
        resumed = await api.post(f"/api/conversations/{cid}/resume")
        assert resumed.status_code == 200, resumed.text
        assert (resumed.json()["status"], resumed.json()["run"]) == ("suspended", "resume")
    await _sequence_went_on(db, rt, gateway, identity_id, cid)


TAKEN_OVER_ROUTE = """
name: taken-over-route
channel: linkedin
inputs: [first_name]
start: connect
nodes:
  - {id: connect, type: send, action: linkedin_connection, text: "Hi {first_name}"}
  - {id: wait_accept, type: wait_for_reply, timeout: 3d}
  - {id: by_hand, type: send, action: email, subject: "Parley", text: "Following up, {first_name}"}
  - {id: done, type: end}
edges:
  - {from: connect, to: by_hand, when: taken_over}
  - {from: connect, to: wait_accept}
  - {from: wait_accept, to: done}
  - {from: by_hand, to: done}
"""


async def test_a_taken_over_node_leaves_by_its_taken_over_edge(
    db: Database,
    rt: Runtime,
    gateway: FakeLinkedInGateway,
    clock: DrivenClock,
    tmp_path: Path,
) -> None:
    path = tmp_path / "route.yaml"
    path.write_text(TAKEN_OVER_ROUTE)
    async with db.transaction() as session:
        name = (await install_campaign(session, path)).name
    identity_id = await _identity(db, gateway)
    _at(clock, TUESDAY_10)
    cid = await _lead_with_run(db, rt, name, identity_id)
    await _asleep(rt, cid)
    assert (await dispatch.manual_send(rt, cid, "Hello, Ana here")).sent
    await lifecycle.resume(db, cid)
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("by_hand", WaitKind.ACTION)
    assert _invitations(gateway) == []


async def test_a_manual_send_while_nothing_is_queued_gives_no_node_a_result(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    """Taken over while it waits for an acceptance (no action of its own): on resume it still
    waits for the reply; a node is only ``taken_over`` when it waited for an action."""
    identity_id, cid = await _visit_queued(db, rt, campaign, gateway, clock)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    await _look_again(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"  # the invitation
    cursor = await _look_again(rt, cid)
    assert cursor.node == "wait_accept"
    await _asleep(rt, cid)
    assert (await dispatch.manual_send(rt, cid, "Saw your post!")).sent
    assert (await _row(db, cid)).task_result is None
    await lifecycle.resume(db, cid)
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("wait_accept", WaitKind.REPLY)


@pytest.mark.needs_postgresql  # the dispatcher's claim races the manual send's
async def test_a_hand_sent_message_racing_the_dispatcher_goes_out_alone(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    """The dispatcher runs while the hand-sent message is on its way: the visit the sequence
    queued is held from the manual send's claim on, so the lead gets the person's message only,
    and the visit ends skipped as taken over."""
    identity_id, cid = await _visit_queued(db, rt, campaign, gateway, clock)
    gateway.hold_next(2.0)  # the manual message's answer comes late
    sending = asyncio.create_task(dispatch.manual_send(rt, cid, "Hi, it's Ana"))
    assert await asyncio.to_thread(gateway.wait_for_actions, 1, 10.0)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"
    assert (await sending).sent
    assert [a.kind for a in gateway.performed] == ["message"]
    visit, manual = await _actions(db, identity_id)
    assert (visit.outcome, visit.reason) == ("skipped", dispatch.TAKEN_OVER_REASON)
    assert manual.outcome == "sent"


async def test_a_hand_sent_message_the_provider_refuses_gives_the_sequence_its_action_back(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id, cid = await _visit_queued(db, rt, campaign, gateway, clock)
    gateway.fail_next("invalid_request", 400)
    result = await dispatch.manual_send(rt, cid, "Hi, it's Ana")
    assert not result.sent
    assert (await _row(db, cid)).status is not Status.PAUSED
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert [a.kind for a in gateway.performed] == ["profile_visit"]
