"""``not_already_contacted``: no other conversation with this lead — on any of its addresses,
by any identity of the installation — exchanged a message or performed an action within the
window. Judged when the edge is, from what is stored then; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from parley.campaign.registry import CampaignCache, install_campaign
from parley.clock import DrivenClock
from parley.conversation import executor, lifecycle
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.db.models import Action, Identity, Message
from parley.runtime import Runtime
from parley.vocabulary import DeliveryStatus, Status
from tests.dispatching.test_outreach import _until_waiting

TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
CAMPAIGN = """
name: first-touch
channel: linkedin
start: hold
nodes:
  - {id: hold, type: wait, duration: 1d}
  - {id: gate, type: branch}
  - {id: go, type: end}
  - {id: skip, type: end}
edges:
  - {from: hold, to: gate}
  - {from: gate, to: go, when: {not_already_contacted: {within: 90d}}}
  - {from: gate, to: skip}
"""
LINKEDIN = "https://linkedin.example/in/ana"
EMAIL = "ana@example.com"


@pytest.fixture
async def rt(db: Database, tmp_path: Path) -> Runtime:
    clock = DrivenClock(tmp_path / "offset")
    clock.set_offset(TUESDAY_10 - datetime.now(UTC))
    path = tmp_path / "first-touch.yaml"
    path.write_text(CAMPAIGN)
    async with db.transaction() as session:
        await install_campaign(session, path)
    return Runtime(db=db, channels={}, post_json=post_json, campaigns=CampaignCache(), clock=clock)


async def _identity(db: Database, channel: str, address: str) -> int:
    async with db.transaction() as session:
        identity = Identity(channel=channel, address=address, timezone="UTC")
        session.add(identity)
        await session.flush()
        return identity.id


async def _conversation(
    db: Database, identity_id: int, channel: str, address: str, fields: dict[str, Any] | None = None
) -> int:
    change = await lifecycle.start(
        db, "first-touch", identity_id, channel=channel, address=address, fields=fields
    )
    return change.conversation_id


async def _message(db: Database, cid: int, at: datetime, direction: str, status: str) -> None:
    async with db.transaction() as session:
        session.add(
            Message(
                conversation_id=cid, direction=direction, text="hi", status=status, created_at=at
            )
        )


async def _action_sent(db: Database, identity_id: int, cid: int, at: datetime) -> None:
    async with db.transaction() as session:
        session.add(
            Action(
                identity_id=identity_id,
                conversation_id=cid,
                channel="linkedin",
                type="linkedin_profile_visit",
                payload={},
                queue="ready",
                not_before=at,
                status="done",
                outcome="sent",
                performed_at=at,
                idempotency_key=f"visit-{cid}",
            )
        )


async def _decided(rt: Runtime, cid: int) -> str:
    """Start the lead's run, let its day of waiting pass, and say where the gate sent it."""
    await executor.begin_run(rt, cid, None)
    await _until_waiting(rt, cid)
    assert isinstance(rt.clock, DrivenClock)
    rt.clock.advance(timedelta(days=1, seconds=1))
    cursor = await _until_waiting(rt, cid)
    assert cursor.status is Status.COMPLETED, cursor
    return cursor.node


async def _seat_and_mailbox(db: Database) -> tuple[int, int]:
    return await _identity(db, "linkedin", "seat-a"), await _identity(db, "email", "b@corp.test")


@pytest.mark.parametrize(("days_ago", "where"), [(10, "skip"), (100, "go")])
async def test_an_email_from_another_identity_counts_within_the_window_only(
    db: Database, rt: Runtime, days_ago: int, where: str
) -> None:
    seat, mailbox = await _seat_and_mailbox(db)
    earlier = await _conversation(db, mailbox, "email", EMAIL)
    sent = rt.clock.now() - timedelta(days=days_ago)
    await _message(db, earlier, sent, "out", DeliveryStatus.DELIVERED.value)
    # The same person, reached on LinkedIn: known by the email in her fields (any case).
    lead = await _conversation(db, seat, "linkedin", LINKEDIN, {"email": "Ana@Example.com"})
    assert await _decided(rt, lead) == where


async def test_the_lead_is_found_through_another_contacts_fields(db: Database, rt: Runtime) -> None:
    seat, mailbox = await _seat_and_mailbox(db)
    earlier = await _conversation(db, seat, "linkedin", LINKEDIN, {"email": EMAIL})
    await _action_sent(db, seat, earlier, rt.clock.now() - timedelta(days=3))
    await lifecycle.cancel(db, earlier, "done with it")
    lead = await _conversation(db, mailbox, "email", EMAIL)  # no fields of its own
    assert await _decided(rt, lead) == "skip"


async def test_a_reply_from_the_lead_in_another_conversation_counts(
    db: Database, rt: Runtime
) -> None:
    seat, mailbox = await _seat_and_mailbox(db)
    earlier = await _conversation(db, mailbox, "email", EMAIL)
    await _message(db, earlier, rt.clock.now() - timedelta(days=1), "in", "received")
    lead = await _conversation(db, seat, "linkedin", LINKEDIN, {"email": EMAIL})
    assert await _decided(rt, lead) == "skip"


async def test_an_unsent_message_another_lead_and_its_own_messages_do_not_count(
    db: Database, rt: Runtime
) -> None:
    seat, mailbox = await _seat_and_mailbox(db)
    earlier = await _conversation(db, mailbox, "email", EMAIL)
    await _message(db, earlier, rt.clock.now(), "out", DeliveryStatus.FAILED.value)
    stranger = await _conversation(db, mailbox, "email", "bob@example.com")
    await _message(db, stranger, rt.clock.now(), "out", DeliveryStatus.SENT.value)
    lead = await _conversation(db, seat, "linkedin", LINKEDIN, {"email": EMAIL})
    await _message(db, lead, rt.clock.now(), "out", DeliveryStatus.SENT.value)
    assert await _decided(rt, lead) == "go"


async def test_it_is_judged_when_the_edge_is_taken_not_when_the_lead_was_started(
    db: Database, rt: Runtime
) -> None:
    """Nobody had written to Ana when her conversation started; while it waited its day,
    another seat visited her profile: at the gate, she counts as contacted."""
    seat = await _identity(db, "linkedin", "seat-a")
    other_seat = await _identity(db, "linkedin", "seat-b")
    lead = await _conversation(db, seat, "linkedin", LINKEDIN)
    await executor.begin_run(rt, lead, None)
    await _until_waiting(rt, lead)
    elsewhere = await _conversation(db, other_seat, "linkedin", LINKEDIN)
    await _action_sent(db, other_seat, elsewhere, rt.clock.now() + timedelta(hours=2))
    assert await _decided(rt, lead) == "skip"


async def test_a_phone_written_with_spaces_is_the_whatsapp_number_it_names(
    db: Database, rt: Runtime
) -> None:
    seat = await _identity(db, "linkedin", "seat-a")
    number = await _identity(db, "whatsapp", "100000000000321")
    earlier = await _conversation(db, number, "whatsapp", "34600999888")
    await _message(db, earlier, rt.clock.now() - timedelta(days=2), "out", "read")
    lead = await _conversation(db, seat, "linkedin", LINKEDIN, {"phone": "+34 600 999 888"})
    assert await _decided(rt, lead) == "skip"
