"""The per-identity dispatcher's scenarios from the Enginy seed, on SQLite and PostgreSQL:
outreach conversations queue actions, one identity's dispatcher performs them within its
working hours and limits, against the loopback LinkedIn gateway and SMTP server, on a driven
clock. (The Prefect half — the per-identity concurrency slot — is in
prefect_adapter/concurrency_slots.py.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.fakes.smtp_server import LoopbackSMTPServer
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.base import InboundBatch, InboundMessage, InboundRole
from parley.channels.email.channel import EmailChannel
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.clock import DrivenClock
from parley.conversation import executor, handshake, inbox, lifecycle
from parley.conversation.http_action import post_json
from parley.conversation.state_machine import Cursor
from parley.db import Database, queries
from parley.db.models import Action, Identity, utcnow
from parley.outreach import dispatch, identities
from parley.runtime import Runtime
from parley.vocabulary import Status, WaitKind

SEQUENCE = """
name: li-sequence
channel: linkedin
inputs: [first_name]
on_reply: thank
start: visit
nodes:
  - {id: visit, type: send, action: linkedin_profile_visit}
  - {id: connect, type: send, action: linkedin_connection, text: "Hi {first_name}, let's connect"}
  - {id: wait_accept, type: wait_for_reply, timeout: 3d}
  - {id: message, type: send, action: linkedin_message, text: "Thanks for connecting!"}
  - {id: mail, type: send, action: email, subject: "Parley", text: "Hello {first_name}"}
  - {id: thank, type: end}
  - {id: done, type: end}
edges:
  - {from: visit, to: connect}
  - {from: connect, to: wait_accept}
  - {from: wait_accept, to: thank, when: replied}
  - {from: wait_accept, to: message, when: no_reply}
  - {from: message, to: mail}
  - {from: mail, to: done}
"""
NO_SPACING = {
    "actions": {
        kind: {"spacing": "0s"}
        for kind in ("linkedin_profile_visit", "linkedin_connection", "linkedin_message", "email")
    }
}
FRIDAY_1701 = datetime(2026, 12, 11, 17, 1, tzinfo=UTC)  # a Friday
TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


@pytest.fixture
def gateway() -> Iterator[FakeLinkedInGateway]:
    fake = FakeLinkedInGateway(require_connection=False)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def smtp() -> Iterator[LoopbackSMTPServer]:
    server = LoopbackSMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clock(tmp_path: Path) -> DrivenClock:
    driven = DrivenClock(tmp_path / "offset")
    driven.set_offset(TUESDAY_10 - datetime.now(UTC))
    return driven


@pytest.fixture
async def rt(db: Database, clock: DrivenClock) -> AsyncIterator[Runtime]:
    runtime = Runtime(
        db=db,
        channels={},
        post_json=post_json,
        campaigns=CampaignCache(),
        lease_seconds=5,
        clock=clock,
        outreach={"linkedin": LinkedInChannel(LinkedInConfig()), "email": EmailChannel()},
    )
    yield runtime
    for provider in runtime.outreach.values():
        await provider.aclose()


@pytest.fixture
async def campaign(db: Database, tmp_path: Path) -> str:
    path = tmp_path / "sequence.yaml"
    path.write_text(SEQUENCE)
    async with db.transaction() as session:
        return (await install_campaign(session, path)).name


async def _identity(
    db: Database,
    gateway: FakeLinkedInGateway,
    *,
    weekly: dict[str, list[str]] | None = None,
    limits: dict[str, object] | None = None,
) -> int:
    hours = {"weekly": weekly or {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}}
    limits = NO_SPACING if limits is None else limits
    async with db.transaction() as session:
        identity = Identity(
            channel="linkedin",
            address="seat-1",
            timezone="UTC",
            policy={"working_hours": hours, "limits": limits},
            settings=dict(gateway.sender().settings),
        )
        session.add(identity)
        await session.flush()
        return identity.id


async def _lead(db: Database, rt: Runtime, campaign: str, identity_id: int, n: int) -> int:
    change = await lifecycle.start(
        db,
        campaign,
        identity_id,
        channel="linkedin",
        address=f"https://linkedin.example/in/lead-{n}",
        name=f"Lead {n}",
        fields={"email": f"lead{n}@example.com"},
        variables={"first_name": f"Lead{n}"},
    )
    await executor.begin_run(rt, change.conversation_id, None)
    return change.conversation_id


async def _until_waiting(rt: Runtime, conversation_id: int) -> Cursor:
    cursor = await executor.current_cursor(rt, conversation_id)
    for _ in range(30):
        due = cursor.wait is None or (
            cursor.wait.until is not None and cursor.wait.until <= rt.clock.now()
        )
        if not cursor.active or not due:
            return cursor
        cursor = await executor.run_step(rt, conversation_id, cursor.step)
    raise AssertionError(cursor)


async def _look_again(rt: Runtime, conversation_id: int) -> Cursor:
    """What the resumed run does once the dispatcher handed it the action's outcome."""
    cursor = await executor.begin_run(rt, conversation_id, None)
    if cursor.active:
        cursor = await executor.run_step(rt, conversation_id, cursor.step)
    return await _until_waiting(rt, conversation_id)


async def _actions(db: Database, identity_id: int) -> list[Action]:
    async with db.read() as session:
        rows = await session.execute(
            select(Action).where(Action.identity_id == identity_id).order_by(Action.id)
        )
        return list(rows.scalars())


def _seeded() -> random.Random:
    return random.Random(7)


async def test_a_send_node_queues_its_action_in_the_step_and_the_run_waits_for_it(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    cursor = await _until_waiting(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("visit", WaitKind.ACTION)
    [action] = await _actions(db, identity_id)
    assert (action.type, action.status, action.queue) == (
        "linkedin_profile_visit",
        "queued",
        "ready",
    )
    replay = await executor.run_step(rt, cid, cursor.step - 1)  # a replayed step: same action
    assert replay.step == cursor.step and len(await _actions(db, identity_id)) == 1
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert [a.kind for a in gateway.performed] == ["profile_visit"]
    cursor = await _look_again(rt, cid)
    assert cursor.node == "connect"


async def test_friday_17_01_waits_for_monday_09_00(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway)
    clock.set_offset(FRIDAY_1701 - datetime.now(UTC))
    await _until_waiting(rt, await _lead(db, rt, campaign, identity_id, 1))
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "waiting"
    [action] = await _actions(db, identity_id)
    monday = datetime(2026, 12, 14, 9, 0, tzinfo=UTC)
    assert action.not_before == monday
    assert monday - FRIDAY_1701 == timedelta(hours=63, minutes=59)
    assert action.reason is not None and "working hours" in action.reason
    assert (action.status, action.attempts) == ("queued", 0)  # put off: not an attempt
    assert gateway.performed == []
    clock.set_offset(monday - datetime.now(UTC))
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    [action] = await _actions(db, identity_id)
    assert (action.status, action.outcome, action.attempts) == ("done", "sent", 1)
    assert action.performed_at is not None
    assert monday <= action.performed_at < monday + timedelta(minutes=1)  # on the driven clock


async def test_a_drain_ends_idle_after_the_last_due_action_and_sends_each_once(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway)
    for n in (1, 2):
        await _until_waiting(rt, await _lead(db, rt, campaign, identity_id, n))
    done = await dispatch.drain(rt, identity_id, _seeded(), limit=20)
    assert done == ["sent", "sent", "idle"]
    assert [a.kind for a in gateway.performed] == ["profile_visit", "profile_visit"]
    assert [(a.status, a.outcome) for a in await _actions(db, identity_id)] == [
        ("done", "sent"),
        ("done", "sent"),
    ]
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=20) == ["idle"]


async def test_the_51st_connection_request_of_the_day_waits_for_the_next_window(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    limits = {
        "actions": {
            "linkedin_connection": {
                "daily": 50,
                "weekly": None,
                "spacing": "0s",
            },
            "linkedin_profile_visit": {"spacing": "0s"},
        }
    }
    identity_id = await _identity(db, gateway, limits=limits)
    now = rt.clock.now()
    async with db.transaction() as session:
        for n in range(50):
            session.add(
                Action(
                    identity_id=identity_id,
                    channel="linkedin",
                    type="linkedin_connection",
                    payload={},
                    not_before=now,
                    status="done",
                    outcome="sent",
                    idempotency_key=f"earlier-{n}",
                    performed_at=now - timedelta(minutes=n),
                )
            )
    cid = await _lead(db, rt, campaign, identity_id, 51)
    await _until_waiting(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"  # the visit
    await _look_again(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "waiting"
    request = (await _actions(db, identity_id))[-1]
    assert request.type == "linkedin_connection"
    assert request.not_before == datetime(2026, 12, 9, 9, 0, tzinfo=UTC)  # Wednesday 09:00
    assert request.reason is not None and "daily" in request.reason


async def test_linkedin_disconnects_mid_campaign_its_actions_park_and_email_keeps_flowing(
    db: Database,
    rt: Runtime,
    campaign: str,
    gateway: FakeLinkedInGateway,
    smtp: LoopbackSMTPServer,
) -> None:
    identity_id = await _identity(db, gateway)
    leads = [await _lead(db, rt, campaign, identity_id, n) for n in range(10)]
    for cid in leads:
        await _until_waiting(rt, cid)
    async with db.transaction() as session:  # a mailbox of the same identity, queued too
        identity = await session.get(Identity, identity_id)
        assert identity is not None
        mailbox = {"address": "me@example.com", **smtp.smtp_settings()}
        identity.settings = {**identity.settings, "email": mailbox}
        session.add(
            Action(
                identity_id=identity_id,
                channel="email",
                type="email",
                payload={"to": "lead@example.com", "text": "hi", "subject": "s"},
                not_before=rt.clock.now() + timedelta(seconds=1),
                idempotency_key="mail-1",
            )
        )
    gateway.expire_session(gateway.sender().address)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "parked"
    actions = await _actions(db, identity_id)
    assert [a.queue for a in actions if a.channel == "linkedin"] == ["linkedin"] * 10
    async with db.read() as session:
        identity = await session.get(Identity, identity_id)
        assert identity is not None and "linkedin" in identity.parked
    await asyncio.sleep(1.1)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"  # the email
    assert smtp.wait_for_messages(1, 5)
    gateway.renew_session(gateway.sender().address)
    # The operator's reconnect: the parked map forgets the queue, or the claim would park
    # its actions again untried (the session is known to be expired while it is parked).
    moved = await identities.reconnect(db, identity_id, "linkedin", now=rt.clock.now())
    assert moved == 10
    for _ in range(10):
        assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    linkedin = [a for a in await _actions(db, identity_id) if a.channel == "linkedin"]
    assert [a.outcome for a in linkedin] == ["sent"] * 10
    assert [a.id for a in sorted(linkedin, key=lambda a: a.performed_at or utcnow())] == [
        a.id for a in linkedin
    ]


async def test_a_reply_after_the_enqueue_and_before_the_send_means_it_is_not_sent(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    await _until_waiting(rt, cid)
    await _suspend(rt, cid)
    await inbox.store_batch(db, _reply(cid, "https://linkedin.example/in/lead-1"), campaign)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "skipped"
    assert gateway.performed == []
    [action] = await _actions(db, identity_id)
    assert (action.outcome, action.reason) == ("skipped", "the contact wrote after it was queued")
    cursor = await _look_again(rt, cid)
    assert cursor.status is Status.COMPLETED and cursor.node == "thank"  # on_reply


async def _suspend(rt: Runtime, conversation_id: int) -> None:
    cursor = await executor.current_cursor(rt, conversation_id)
    assert (await handshake.prepare_suspend(rt, conversation_id, cursor.step)).suspend


def _reply(conversation_id: int, profile: str) -> InboundBatch:
    return InboundBatch(
        messages=[
            InboundMessage(
                channel="linkedin",
                provider_message_id=f"li-msg-{conversation_id}",
                identity_address="seat-1",
                contact_address=profile,
                contact_name=None,
                type="text",
                role=InboundRole.ANSWER,
                text="sure, tell me more",
                reply_id=None,
                context_message_id=None,
                timestamp=utcnow(),
                raw={},
            )
        ],
        statuses=[],
        ignored=[],
    )


async def test_a_429_storm_waits_for_retry_after_and_then_sends_once(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway)
    await _until_waiting(rt, await _lead(db, rt, campaign, identity_id, 1))
    gateway.fail_next("rate_limited", 429, count=3, retry_after=120)
    for _ in range(3):
        assert await dispatch.perform_next(rt, identity_id, _seeded()) == "retrying"
        [action] = await _actions(db, identity_id)
        assert action.reason is not None and "RateLimited" in action.reason
        assert await dispatch.perform_next(rt, identity_id, _seeded()) in ("idle", "waiting")
        clock.advance(timedelta(seconds=121))
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert len(gateway.performed) == 1


async def test_an_undeliverable_lead_completes_the_conversation_with_the_reason(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    await _until_waiting(rt, cid)
    gateway.mark_unavailable("https://linkedin.example/in/lead-1")
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "failed"
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, cid)
    assert row.status is Status.COMPLETED and row.last_error


@pytest.mark.needs_postgresql  # two sessions claim at once: SKIP LOCKED
async def test_two_dispatchers_racing_for_one_identity_never_double_send(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway)
    leads = [await _lead(db, rt, campaign, identity_id, n) for n in range(6)]
    for cid in leads:
        await _until_waiting(rt, cid)

    async def dispatcher() -> list[str]:
        done = []
        while (outcome := await dispatch.perform_next(rt, identity_id, _seeded())) != "idle":
            done.append(outcome)
        return done

    first, second = await asyncio.gather(dispatcher(), dispatcher())
    assert sorted(first + second) == ["sent"] * 6
    assert len(gateway.performed) == 6
    assert len({a.payload["to"] for a in await _actions(db, identity_id)}) == 6


async def test_a_dispatcher_killed_mid_action_retries_with_the_same_key_and_sends_once(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    from prefect_adapter.outreach_tick import recover_abandoned_actions

    identity_id = await _identity(db, gateway)
    await _until_waiting(rt, await _lead(db, rt, campaign, identity_id, 1))
    [action] = await _actions(db, identity_id)
    async with db.transaction() as session:  # claimed, then the process died mid-call
        row = await queries.actions.lock_action(session, action.id)
        row.status, row.claimed_at = "running", utcnow() - timedelta(minutes=10)
    assert await recover_abandoned_actions(rt, timedelta(minutes=5)) == 1
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert len(gateway.performed) == 1


async def test_a_manual_send_outside_working_hours_is_refused_with_the_reason(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    await _until_waiting(rt, cid)
    clock.set_offset(FRIDAY_1701 - datetime.now(UTC))
    refused = await dispatch.manual_send(rt, cid, "Are you free for a call?")
    assert not refused.sent and "working hours" in refused.reason
    assert gateway.performed == []
    assert [a.status for a in await _actions(db, identity_id)] == ["queued"]


async def test_a_manual_send_goes_out_now_and_interrupts_the_sequence(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    await _until_waiting(rt, cid)  # the profile visit is queued
    sent = await dispatch.manual_send(rt, cid, "Hi, it's Ana from Parley")
    assert sent.sent, sent.reason
    assert [(a.kind, a.text) for a in gateway.performed] == [
        ("message", "Hi, it's Ana from Parley")
    ]
    visit, manual = await _actions(db, identity_id)
    assert (visit.outcome, visit.reason) == ("skipped", "a person took over with a manual message")
    assert (manual.outcome, manual.payload["manual"]) == ("sent", True)
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, cid)
    assert (row.status, row.paused_by) == (Status.PAUSED, "operator")


async def test_a_manual_send_on_a_parked_channel_is_refused(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    await _until_waiting(rt, cid)
    gateway.expire_session(gateway.sender().address)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "parked"
    refused = await dispatch.manual_send(rt, cid, "hello?")
    assert not refused.sent and "parked" in refused.reason


async def test_a_manual_inmail_while_credits_are_out_is_refused_and_a_message_goes(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    """Credits park InMails only: a hand-sent InMail is refused, a hand-sent message is not."""
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    await _until_waiting(rt, cid)
    async with db.transaction() as session:
        identity = await queries.identities.lock_identity(session, identity_id)
        identity.parked = {"credits": {"reason": "no InMail credits", "since": "2026-12-08"}}
    refused = await dispatch.manual_send(rt, cid, "hello?", action_type="linkedin_inmail")
    assert not refused.sent and refused.reason.startswith("credits is parked")
    assert gateway.performed == []
    assert (await dispatch.manual_send(rt, cid, "hello?")).sent  # a message: not parked
    assert [a.kind for a in gateway.performed] == ["message"]


async def test_parley_send_from_the_cli_says_why_not_or_sends(
    db: Database,
    rt: Runtime,
    campaign: str,
    gateway: FakeLinkedInGateway,
    clock: DrivenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from parley.cli import app
    from parley.settings import get_settings

    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    await _until_waiting(rt, cid)
    monkeypatch.setenv("PARLEY_DATABASE_URL", db.url)
    monkeypatch.setenv("PARLEY_CLOCK_FILE", str(clock.path))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        clock.set_offset(FRIDAY_1701 - datetime.now(UTC))
        args = ["send", str(cid), "--text", "Quick question", "--json"]
        refused = await asyncio.to_thread(runner.invoke, app, args)
        assert refused.exit_code == 1 and '"sent": false' in refused.output
        assert "working hours" in refused.output
        clock.set_offset(TUESDAY_10 - datetime.now(UTC))
        sent = await asyncio.to_thread(runner.invoke, app, args)
        assert sent.exit_code == 0, sent.output
        assert [a.text for a in gateway.performed] == ["Quick question"]
    finally:
        get_settings.cache_clear()


FALLBACK = """
name: mail-fallback
channel: linkedin
start: mail
nodes:
  - {id: mail, type: send, action: email, subject: "Parley", text: "Hello again"}
  - {id: listen, type: wait_for_reply, timeout: 5d}
  - {id: thanks, type: end}
  - {id: done, type: end}
edges:
  - {from: mail, to: listen}
  - {from: listen, to: thanks, when: replied}
  - {from: listen, to: done, when: no_reply}
"""


async def test_an_email_reply_to_a_linkedin_sequences_fallback_reaches_its_conversation(
    db: Database,
    rt: Runtime,
    gateway: FakeLinkedInGateway,
    smtp: LoopbackSMTPServer,
    tmp_path: Path,
) -> None:
    """The lead answers the email fallback: another account (the mailbox) and another address
    (their email) than the conversation's, matched by In-Reply-To to what the sequence sent."""
    path = tmp_path / "fallback.yaml"
    path.write_text(FALLBACK)
    async with db.transaction() as session:
        name = (await install_campaign(session, path)).name
    identity_id = await _identity(db, gateway)
    async with db.transaction() as session:
        identity = await session.get(Identity, identity_id)
        assert identity is not None
        mailbox = {"address": "me@example.com", **smtp.smtp_settings()}
        identity.settings = {**identity.settings, "email": mailbox}
    change = await lifecycle.start(
        db,
        name,
        identity_id,
        channel="linkedin",
        address="lead-9",
        fields={"email": "lead9@example.com"},
    )
    cid = change.conversation_id
    await executor.begin_run(rt, cid, None)
    await _until_waiting(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    [mail] = await _actions(db, identity_id)
    assert mail.provider_id and mail.provider_id.startswith("<")
    cursor = await _look_again(rt, cid)
    assert cursor.node == "listen"
    await _suspend(rt, cid)
    reply = InboundMessage(
        channel="email",
        provider_message_id="<reply-1@example.com>",
        identity_address="me@example.com",
        contact_address="lead9@example.com",
        contact_name=None,
        type="text",
        role=InboundRole.ANSWER,
        text="Yes, let's talk",
        reply_id=None,
        context_message_id=mail.provider_id,
        timestamp=utcnow(),
        raw={},
    )
    result = await inbox.store_batch(db, InboundBatch(messages=[reply]), None)
    assert (result.stored, result.unmatched) == (1, 0)
    assert [w.conversation_id for w in result.wakeups] == [cid]
    cursor = await _look_again(rt, cid)
    assert (cursor.status, cursor.node) == (Status.COMPLETED, "thanks")
