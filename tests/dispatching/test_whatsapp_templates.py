"""Business-initiated WhatsApp messages: outside the 24-hour window a lead gets an approved
template, queued and paced like any outreach action; Meta's per-pair pacing error (131056) is a
rate limit the identity waits out, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.clock import DrivenClock
from parley.conversation import executor, lifecycle
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.db.models import Identity
from parley.outreach import dispatch
from parley.runtime import Runtime
from tests.dispatching.test_outreach import _actions, _seeded, _until_waiting

PHONE_ID = "100000000000321"
REACTIVATION = """
name: reactivation
channel: whatsapp
inputs: [first_name]
start: nudge
nodes:
  - {id: nudge, type: send, action: whatsapp_template, template: winback_1, text: "{first_name}"}
  - {id: listen, type: wait_for_reply, timeout: 7d}
  - {id: thanks, type: end, text: "Great to hear from you!"}
  - {id: done, type: end}
edges:
  - {from: nudge, to: listen}
  - {from: listen, to: thanks, when: replied}
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


async def _lead(db: Database, rt: Runtime, tmp_path: Path) -> tuple[int, int]:
    path = tmp_path / "reactivation.yaml"
    path.write_text(REACTIVATION)
    async with db.transaction() as session:
        name = (await install_campaign(session, path)).name
        identity = Identity(channel="whatsapp", address=PHONE_ID, timezone="UTC")
        session.add(identity)
        await session.flush()
        identity_id = identity.id
    change = await lifecycle.start(
        db,
        name,
        identity_id,
        channel="whatsapp",
        address="34600999888",
        variables={"first_name": "Marta"},
    )
    await executor.begin_run(rt, change.conversation_id, None)
    return identity_id, change.conversation_id


async def test_a_lead_outside_the_window_gets_the_approved_template_with_its_parameter(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path)
    await _until_waiting(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    [record] = fake.received
    assert record["type"] == "template"
    assert record["template"]["name"] == "winback_1"
    assert record["template"]["components"][0]["parameters"] == [{"type": "text", "text": "Marta"}]
    [action] = await _actions(db, identity_id)
    assert action.provider_id and action.provider_id.startswith("wamid.")


async def test_meta_pacing_a_pair_131056_is_waited_out_as_a_rate_limit(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path)
    await _until_waiting(rt, cid)
    fake.fail_next(131056, 400)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "retrying"
    [action] = await _actions(db, identity_id)
    assert action.status == "queued" and action.not_before > rt.clock.now()
    assert action.reason is not None and "RateLimited" in action.reason
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"
    assert isinstance(rt.clock, DrivenClock)
    rt.clock.advance(action.not_before - rt.clock.now() + timedelta(seconds=1))
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert len(fake.received) == 1
