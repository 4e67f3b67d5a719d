"""``has_whatsapp``: the WhatsApp Cloud API cannot say whether a number is a WhatsApp account
before a send, so the first send answers it. Meta's 131026 ("Message Undeliverable": not a
WhatsApp user) fails the action, the node takes its ``when: error`` edge, and the lead is
marked so ``has_whatsapp`` is false from then on — for this conversation and the next ones.
On SQLite and PostgreSQL, against the loopback WhatsApp fake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.clock import DrivenClock
from parley.conversation import executor, lifecycle
from parley.conversation.http_action import post_json
from parley.db import Database, queries
from parley.db.models import Identity
from parley.outreach import dispatch
from parley.runtime import Runtime
from parley.vocabulary import WHATSAPP_ACCOUNT_FIELD, Status
from tests.dispatching.test_outreach import _actions, _look_again, _seeded, _until_waiting

PHONE_ID = "100000000000321"
LEAD = "34600999888"
OTHER = "34600111222"
CAMPAIGN = """
name: wa-first
channel: whatsapp
start: gate
nodes:
  - {id: gate, type: branch}
  - {id: nudge, type: send, action: whatsapp_template, template: winback_1, text: "hi"}
  - {id: after_error, type: branch}
  - {id: listen, type: wait_for_reply, timeout: 7d}
  - {id: no_whatsapp, type: end}
  - {id: other_error, type: end}
  - {id: done, type: end}
edges:
  - {from: gate, to: nudge, when: has_whatsapp}
  - {from: gate, to: no_whatsapp}
  - {from: nudge, to: after_error, when: error}
  - {from: nudge, to: listen}
  - {from: after_error, to: no_whatsapp, when: {has_whatsapp: false}}
  - {from: after_error, to: other_error}
  - {from: listen, to: done, when: replied}
  - {from: listen, to: done, when: no_reply}
"""
TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)


@pytest.fixture
def fake() -> Iterator[FakeWhatsAppAPI]:
    api = FakeWhatsAppAPI(access_token="t", phone_number_id=PHONE_ID)
    api.start()
    yield api
    api.stop()


@pytest.fixture
async def rt(db: Database, fake: FakeWhatsAppAPI, tmp_path: Path) -> AsyncIterator[Runtime]:
    clock = DrivenClock(tmp_path / "offset")
    clock.set_offset(TUESDAY_10 - datetime.now(UTC))
    channel = WhatsAppChannel(WhatsAppConfig(fake.api_url, "t", PHONE_ID, "s", "v", 2))
    runtime = Runtime(
        db=db,
        channels={"whatsapp": channel},
        post_json=post_json,
        campaigns=CampaignCache(),
        clock=clock,
        outreach={"whatsapp": channel},
    )
    yield runtime
    await channel.aclose()


@pytest.fixture
async def number(db: Database, tmp_path: Path) -> int:
    path = tmp_path / "wa-first.yaml"
    path.write_text(CAMPAIGN)
    async with db.transaction() as session:
        await install_campaign(session, path)
        identity = Identity(channel="whatsapp", address=PHONE_ID, timezone="UTC")
        session.add(identity)
        await session.flush()
        return identity.id


async def _start(db: Database, rt: Runtime, identity_id: int, phone: str) -> int:
    change = await lifecycle.start(db, "wa-first", identity_id, channel="whatsapp", address=phone)
    await executor.begin_run(rt, change.conversation_id, None)
    await _until_waiting(rt, change.conversation_id)
    return change.conversation_id


async def _where(db: Database, cid: int) -> tuple[str, Status]:
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, cid)
        return row.current_node, Status(row.status)


async def test_a_number_that_is_no_whatsapp_account_takes_the_error_edge_and_is_marked(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, number: int
) -> None:
    fake.not_on_whatsapp(LEAD)
    cid = await _start(db, rt, number, LEAD)
    assert (await _where(db, cid))[0] == "nudge"  # before any send: a phone is enough
    assert await dispatch.perform_next(rt, number, _seeded()) == "failed"
    [action] = await _actions(db, number)
    assert action.reason is not None and "NotOnWhatsApp" in action.reason
    assert "131026" in action.reason
    await _look_again(rt, cid)
    assert await _where(db, cid) == ("no_whatsapp", Status.COMPLETED)
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, cid)
        contact = await queries.contacts.get_contact(session, row.contact_id)
    assert contact.fields[WHATSAPP_ACCOUNT_FIELD] is False
    assert fake.received == []


async def test_the_next_conversation_with_that_lead_knows_it_has_no_whatsapp_and_sends_nothing(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, number: int
) -> None:
    fake.not_on_whatsapp(LEAD)
    first = await _start(db, rt, number, LEAD)
    await dispatch.perform_next(rt, number, _seeded())
    await _look_again(rt, first)
    second = await _start(db, rt, number, LEAD)
    assert await _where(db, second) == ("no_whatsapp", Status.COMPLETED)
    assert len(await _actions(db, number)) == 1  # the first conversation's only


async def test_a_whatsapp_user_gets_the_template_and_is_not_marked(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, number: int
) -> None:
    fake.not_on_whatsapp(LEAD)  # someone else
    cid = await _start(db, rt, number, OTHER)
    assert await dispatch.perform_next(rt, number, _seeded()) == "sent"
    await _look_again(rt, cid)
    assert (await _where(db, cid))[0] == "listen"
    [record] = fake.received
    assert record["to"] == OTHER


async def test_another_permanent_refusal_takes_the_error_edge_without_marking_the_lead(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, number: int
) -> None:
    cid = await _start(db, rt, number, LEAD)
    fake.fail_next(100, 400)  # invalid parameter: nothing said about the number
    assert await dispatch.perform_next(rt, number, _seeded()) == "failed"
    await _look_again(rt, cid)
    assert await _where(db, cid) == ("other_error", Status.COMPLETED)
