"""A suppressed lead is never sent to: the dispatcher's freshness check reads the do-not-contact
list at the last moment, so an action queued before the suppression is skipped
(``suppressed: ...``), nothing reaches the provider, and the conversation ends — the sequence
does not go on to another channel. Its suspended run is resumed to finish. On SQLite and
PostgreSQL, with the loopback LinkedIn gateway and the driven clock."""

from __future__ import annotations

from uuid import uuid4

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley import suppression
from parley.channels.base import InboundBatch, InboundMessage, InboundRole
from parley.clock import DrivenClock
from parley.conversation import executor, handshake, inbox
from parley.conversation.handshake import WakeUp
from parley.db import Database, queries
from parley.db.models import Identity, utcnow
from parley.outreach import dispatch
from parley.runtime import Runtime
from parley.vocabulary import Status, WaitKind
from tests.dispatching.test_outreach import (  # the outreach scenarios' fixtures and helpers
    _actions,
    _identity,
    _lead,
    _seeded,
    _until_waiting,
    campaign,
    clock,
    gateway,
    rt,
)

__all__ = ["campaign", "clock", "gateway", "rt"]  # fixtures, used by name

FLOW_RUN = str(uuid4())


async def _asleep_waiting_for_its_visit(
    db: Database, rt: Runtime, campaign: str, identity_id: int
) -> int:
    cid = await _lead(db, rt, campaign, identity_id, 1)
    await executor.begin_run(rt, cid, FLOW_RUN)
    cursor = await _until_waiting(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("visit", WaitKind.ACTION)
    assert (await handshake.prepare_suspend(rt, cid, cursor.step)).suspend
    return cid


async def _suppress(db: Database, address: str, identity_id: int | None = None) -> None:
    async with db.transaction() as session:
        await suppression.add(session, address, "unsubscribed", identity_id=identity_id)


async def _row(db: Database, cid: int) -> object:
    async with db.read() as session:
        return await queries.conversations.get_conversation(session, cid)


async def test_an_action_queued_before_the_suppression_is_skipped_and_the_conversation_ends(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _asleep_waiting_for_its_visit(db, rt, campaign, identity_id)
    await _suppress(db, "LEAD1@example.com")  # the lead's email field, another spelling
    woken: list[WakeUp] = []

    async def wake(wakeup: WakeUp) -> None:
        woken.append(wakeup)

    assert await dispatch.drain(rt, identity_id, _seeded(), limit=5, wake=wake) == [
        "skipped",
        "idle",
    ]
    assert gateway.performed == []
    [visit] = await _actions(db, identity_id)
    assert (visit.status, visit.outcome) == ("done", "skipped")
    assert visit.reason == (
        "suppressed: lead1@example.com is on the do-not-contact list (unsubscribed)"
    )
    row = await _row(db, cid)
    assert row.status is Status.COMPLETED  # type: ignore[attr-defined]
    assert row.last_error is not None and row.last_error.startswith("suppressed")  # type: ignore[attr-defined]
    assert woken == [WakeUp(cid, "resume", FLOW_RUN)]  # its suspended run finishes
    cursor = await executor.begin_run(rt, cid, FLOW_RUN)  # what the resumed run does
    assert not cursor.active
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=5) == ["idle"]
    assert [a.outcome for a in await _actions(db, identity_id)] == ["skipped"]  # nothing next


async def test_a_live_run_waiting_for_the_action_finds_its_conversation_ended(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    cursor = await _until_waiting(rt, cid)  # awake: it holds its lease, not suspended
    await _suppress(db, "lead1@example.com", identity_id)
    woken: list[WakeUp] = []

    async def wake(wakeup: WakeUp) -> None:
        woken.append(wakeup)

    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "skipped"
    assert woken == [] and gateway.performed == []
    cursor = await executor.run_step(rt, cid, cursor.step)  # its next look
    assert not cursor.active
    assert (await _row(db, cid)).status is Status.COMPLETED  # type: ignore[attr-defined]


async def test_a_suppression_for_another_identity_does_not_stop_this_one(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway)
    async with db.transaction() as session:
        other = Identity(channel="linkedin", address="seat-2")
        session.add(other)
        await session.flush()
        other_id = other.id
    await _asleep_waiting_for_its_visit(db, rt, campaign, identity_id)
    await _suppress(db, "lead1@example.com", other_id)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert [a.kind for a in gateway.performed] == ["profile_visit"]


async def test_a_manual_send_to_a_suppressed_lead_is_refused(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _asleep_waiting_for_its_visit(db, rt, campaign, identity_id)
    await _suppress(db, "lead1@example.com")
    sent = await dispatch.manual_send(rt, cid, "hello?")
    assert not sent.sent and sent.reason.startswith("suppressed")
    assert gateway.performed == []


async def test_stop_arriving_while_an_action_is_queued_keeps_the_action_from_going(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway)
    cid = await _asleep_waiting_for_its_visit(db, rt, campaign, identity_id)
    stop = InboundMessage(
        channel="linkedin",
        provider_message_id="li-stop-1",
        identity_address="seat-1",
        contact_address="https://linkedin.example/in/lead-1",
        contact_name=None,
        type="text",
        role=InboundRole.ANSWER,
        text="Unsubscribe.",
        reply_id=None,
        context_message_id=None,
        timestamp=utcnow(),
        raw={},
    )
    result = await inbox.store_batch(db, InboundBatch(messages=[stop]), None)
    assert result.confirmations == []  # LinkedIn: no confirmation, one message too many
    assert result.wakeups == [WakeUp(cid, "resume", FLOW_RUN)]
    row = await _row(db, cid)
    assert row.status is Status.COMPLETED  # type: ignore[attr-defined]
    async with db.read() as session:
        # A LinkedIn member URL that is no profile address: the lead's email is listed.
        listed = [(s.address, s.reason) for s in await suppression.list_suppressions(session)]
    assert listed == [("lead1@example.com", "unsubscribed")]
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "skipped"
    [visit] = await _actions(db, identity_id)
    assert visit.reason is not None and visit.reason.startswith("suppressed")
    assert gateway.performed == []
