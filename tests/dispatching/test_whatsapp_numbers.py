"""Several WhatsApp numbers in one installation, on SQLite and PostgreSQL: an identity's templates
go out from its own number (over real HTTP to the fake Graph API, which records the number of
each send), and a lead's reply — a signed Meta webhook on that number, through the real
``/webhooks/whatsapp`` route — reaches the outreach conversation and interrupts its sequence
instead of starting an onboarding conversation. Two identities never share a number.

Wake-ups are recorded instead of reaching Prefect; the runs are driven with the executor, as
the dispatcher tests do."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

import webhook.app as webhook_app
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_text_message_payload
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.channels.whatsapp.wire import SIGNATURE_HEADER, sign
from parley.clock import DrivenClock
from parley.conversation import executor, lifecycle
from parley.conversation.handshake import WakeUp
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.db.models import Action, Conversation, Message, WebhookEvent
from parley.errors import AlreadyExists, InvalidInput
from parley.outreach import dispatch, identities
from parley.runtime import Runtime
from parley.settings import Settings
from parley.vocabulary import Status
from tests.dispatching.test_identities import cli
from tests.dispatching.test_outreach import _look_again, _seeded, _suspend, _until_waiting
from tests.operator_api import operator_api
from webhook import deps
from webhook.routes import identities as identity_routes

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "installation-token"
APP_SECRET = "test-whatsapp-app-secret"
BOT_NUMBER = "100000000000001"  # PARLEY_WHATSAPP_PHONE_NUMBER_ID: the onboarding bot's
NUMBER_A = "100000000000111"
NUMBER_B = "100000000000222"
TOKEN_B = "token-of-number-b"
SEAT_NUMBER = "100000000000333"
LEAD = "34600999888"
TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)

WINBACK = """
name: winback
channel: {channel}
inputs: [first_name]
start: nudge
nodes:
  - {{id: nudge, type: send, action: whatsapp_template, template: winback_1,
     text: "{{first_name}}"}}
  - {{id: listen, type: wait_for_reply, timeout: 3d}}
  - {{id: again, type: send, action: whatsapp_template, template: winback_2,
     text: "{{first_name}}"}}
  - {{id: stopped, type: end{thanks}}}
  - {{id: done, type: end}}
edges:
  - {{from: nudge, to: listen}}
  - {{from: listen, to: stopped, when: replied}}
  - {{from: listen, to: again, when: no_reply}}
  - {{from: again, to: done}}
"""


@pytest.fixture
def fake() -> Iterator[FakeWhatsAppAPI]:
    api = FakeWhatsAppAPI(access_token=TOKEN, phone_number_id=BOT_NUMBER)
    api.add_number(NUMBER_A)
    api.add_number(NUMBER_B, TOKEN_B)
    api.add_number(SEAT_NUMBER)
    api.start()
    yield api
    api.stop()


@pytest.fixture
async def rt(db: Database, fake: FakeWhatsAppAPI, tmp_path: Path) -> AsyncIterator[Runtime]:
    clock = DrivenClock(tmp_path / "offset")
    clock.set_offset(TUESDAY_10 - datetime.now(UTC))
    channel = WhatsAppChannel(
        WhatsAppConfig(fake.api_url, TOKEN, BOT_NUMBER, APP_SECRET, "verify", 5)
    )
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
def woken(monkeypatch: pytest.MonkeyPatch) -> list[WakeUp]:
    wakeups: list[WakeUp] = []

    async def wake(_db: Database, _settings: Settings, wakeup: WakeUp) -> None:
        wakeups.append(wakeup)

    monkeypatch.setattr(deps, "wake", wake)
    return wakeups


@pytest.fixture
async def webhook(db: Database, rt: Runtime, woken: list[WakeUp]) -> AsyncIterator[Any]:
    """The real app with what its lifespan would put on ``app.state``, the onboarding campaign
    installed as the default (a wrongly routed reply would start a conversation on it)."""
    async with db.transaction() as session:
        onboarding = await install_campaign(session, ROOT / "examples/campaigns/onboarding.yaml")
    app: FastAPI = webhook_app.create_app()
    app.state.db = db
    app.state.settings = Settings(
        whatsapp_phone_number_id=BOT_NUMBER, whatsapp_app_secret=APP_SECRET
    )
    app.state.channels = {"whatsapp": rt.channel("whatsapp")}
    app.state.campaign_name = onboarding.name
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:

        async def post(number: str, phone: str, text: str) -> dict[str, Any]:
            payload = build_text_message_payload(
                phone_number_id=number, from_phone=phone, text=text, contact_name="Marta"
            )
            raw = json.dumps(payload).encode()
            response = await client.post(
                "/webhooks/whatsapp",
                content=raw,
                headers={
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign(raw, APP_SECRET),
                },
            )
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

        yield post


async def _campaign(db: Database, tmp_path: Path, channel: str) -> str:
    path = tmp_path / f"winback-{channel}.yaml"
    # A LinkedIn lead's conversation answers on LinkedIn: no gateway here, so no last text.
    thanks = ', text: "Thanks! Someone from our team will write to you here."'
    path.write_text(WINBACK.format(channel=channel, thanks=thanks if channel == "whatsapp" else ""))
    async with db.transaction() as session:
        return (await install_campaign(session, path)).name


async def _whatsapp_identity(db: Database, address: str, **settings: Any) -> int:
    added = await identities.add_identity(db, "whatsapp", address, settings=settings)
    return int(added["id"])


async def _start(
    db: Database,
    rt: Runtime,
    campaign: str,
    identity_id: int,
    channel: str,
    address: str,
    **kw: Any,
) -> int:
    change = await lifecycle.start(
        db, campaign, identity_id, channel=channel, address=address, **kw
    )
    await executor.begin_run(rt, change.conversation_id, None)
    await _until_waiting(rt, change.conversation_id)
    return change.conversation_id


async def _sent_and_listening(rt: Runtime, identity_id: int, conversation_id: int) -> None:
    """The dispatcher sends the template; the resumed run waits for the reply, suspended."""
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert (await _look_again(rt, conversation_id)).node == "listen"
    await _suspend(rt, conversation_id)


async def _conversations(db: Database) -> list[Conversation]:
    async with db.read() as session:
        return list((await session.scalars(select(Conversation).order_by(Conversation.id))).all())


async def _inbound_of(db: Database, conversation_id: int) -> list[str | None]:
    async with db.read() as session:
        stmt = select(Message.text).where(
            Message.conversation_id == conversation_id, Message.direction == "in"
        )
        return list((await session.scalars(stmt)).all())


async def test_whatsapp_template_goes_out_from_the_identitys_own_number(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    campaign = await _campaign(db, tmp_path, "whatsapp")
    a = await _whatsapp_identity(db, "+34911000111", phone_number_id=NUMBER_A)
    b = await _whatsapp_identity(db, "+34911000222", phone_number_id=NUMBER_B, access_token=TOKEN_B)
    vars_ = {"variables": {"first_name": "Marta"}}
    await _start(db, rt, campaign, a, "whatsapp", "34600000001", **vars_)
    await _start(db, rt, campaign, b, "whatsapp", "34600000002", **vars_)

    assert await dispatch.perform_next(rt, a, _seeded()) == "sent"
    assert await dispatch.perform_next(rt, b, _seeded()) == "sent"

    assert [r["to"] for r in fake.sent_from(NUMBER_A)] == ["34600000001"]
    assert [r["to"] for r in fake.sent_from(NUMBER_B)] == ["34600000002"]
    assert fake.sent_from(BOT_NUMBER) == []
    # B's own token went with B's number (the fake refuses a number another token cannot see);
    # operators never read it back.
    [shown] = [i for i in await identities.list_identities(db) if i["id"] == b]
    assert shown["settings"] == {"phone_number_id": NUMBER_B, "access_token": identities.MASK}


async def test_a_whatsapp_identity_whose_token_cannot_send_from_its_number_fails_the_action(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    campaign = await _campaign(db, tmp_path, "whatsapp")
    b = await _whatsapp_identity(db, "+34911000222", phone_number_id=NUMBER_B)  # no own token
    await _start(db, rt, campaign, b, "whatsapp", LEAD, variables={"first_name": "Marta"})

    assert await dispatch.perform_next(rt, b, _seeded()) == "failed"

    assert fake.received == []  # never sent from the installation's number instead
    async with db.read() as session:
        [action] = (await session.scalars(select(Action).where(Action.identity_id == b))).all()
    assert action.reason is not None and f"'{NUMBER_B}' does not exist" in action.reason


async def test_reply_on_the_identitys_number_reaches_the_outreach_conversation(
    db: Database,
    rt: Runtime,
    fake: FakeWhatsAppAPI,
    webhook: Any,
    woken: list[WakeUp],
    tmp_path: Path,
) -> None:
    """Two numbers, one lead in a sequence with each: the lead answers B's template on B's
    number; B's sequence stops, A's goes on, and no onboarding conversation starts."""
    campaign = await _campaign(db, tmp_path, "whatsapp")
    a = await _whatsapp_identity(db, "+34911000111", phone_number_id=NUMBER_A)
    b = await _whatsapp_identity(db, "+34911000222", phone_number_id=NUMBER_B, access_token=TOKEN_B)
    vars_ = {"variables": {"first_name": "Marta"}}
    with_a = await _start(db, rt, campaign, a, "whatsapp", LEAD, **vars_)
    with_b = await _start(db, rt, campaign, b, "whatsapp", LEAD, **vars_)
    await _sent_and_listening(rt, a, with_a)
    await _sent_and_listening(rt, b, with_b)

    answer = await webhook(NUMBER_B, LEAD, "yes, tell me more")

    assert (answer["stored"], answer["duplicates"]) == (1, 0)
    assert [w.conversation_id for w in woken] == [with_b]
    assert await _inbound_of(db, with_b) == ["yes, tell me more"]
    assert [c.id for c in await _conversations(db)] == [with_a, with_b]  # no onboarding
    cursor = await _look_again(rt, with_b)
    assert (cursor.status, cursor.node) == (Status.COMPLETED, "stopped")
    # The conversation's own answer comes from B's number too: the lead writes on there.
    assert fake.texts_to(LEAD)[-1].startswith("Thanks! Someone")
    assert fake.sent_from(NUMBER_B)[-1]["type"] == "text"

    assert isinstance(rt.clock, DrivenClock)
    rt.clock.advance(timedelta(days=3, minutes=1))
    assert (await _look_again(rt, with_a)).node == "again"  # A heard nothing: it goes on
    assert await dispatch.perform_next(rt, b, _seeded()) == "idle"
    assert await dispatch.perform_next(rt, a, _seeded()) == "sent"
    assert [r["template"]["name"] for r in fake.sent_from(NUMBER_A)] == ["winback_1", "winback_2"]
    assert [r.get("template", {}).get("name") for r in fake.sent_from(NUMBER_B)] == [
        "winback_1",
        None,  # the thanks
    ]
    assert fake.sent_from(BOT_NUMBER) == []


@pytest.mark.parametrize("own_number", [True, False], ids=["seat-number", "installation-number"])
async def test_a_linkedin_seats_template_goes_out_from_its_number_and_a_reply_stops_it(
    db: Database,
    rt: Runtime,
    fake: FakeWhatsAppAPI,
    webhook: Any,
    woken: list[WakeUp],
    tmp_path: Path,
    own_number: bool,
) -> None:
    """The seat's ``whatsapp.phone_number_id``, or without one the installation's number; the
    lead's reply on that number reaches the seat's conversation through the lead's
    ``whatsapp`` field."""
    campaign = await _campaign(db, tmp_path, "linkedin")
    settings: dict[str, Any] = {"account_id": "seat-1"}
    if own_number:
        settings["whatsapp"] = {"phone_number_id": SEAT_NUMBER, "language": "es"}
    seat = await identities.add_identity(db, "linkedin", "seat-1", settings=settings)
    number = SEAT_NUMBER if own_number else BOT_NUMBER
    cid = await _start(
        db,
        rt,
        campaign,
        seat["id"],
        "linkedin",
        "https://www.linkedin.com/in/marta",
        fields={"whatsapp": f"+{LEAD}"},
        variables={"first_name": "Marta"},
    )
    await _sent_and_listening(rt, seat["id"], cid)
    [template] = fake.sent_from(number)
    assert template["to"] == f"+{LEAD}"
    assert template["template"]["language"]["code"] == ("es" if own_number else "en")
    assert len(fake.received) == 1

    answer = await webhook(number, LEAD, "¡hola!")

    assert (answer["stored"], answer["duplicates"]) == (1, 0)
    assert [w.conversation_id for w in woken] == [cid]
    assert [c.id for c in await _conversations(db)] == [cid]
    cursor = await _look_again(rt, cid)
    assert (cursor.status, cursor.node) == (Status.COMPLETED, "stopped")


async def test_a_stranger_on_an_outreach_number_starts_nothing_unless_its_identity_says_so(
    db: Database, rt: Runtime, fake: FakeWhatsAppAPI, webhook: Any
) -> None:
    b = await _whatsapp_identity(db, "+34911000222", phone_number_id=NUMBER_B, access_token=TOKEN_B)

    unmatched = await webhook(NUMBER_B, "34600111222", "hello?")

    assert (unmatched["stored"], await _conversations(db)) == (0, [])
    async with db.read() as session:
        [event] = (await session.scalars(select(WebhookEvent))).all()
    assert event.kind == "unmatched_message" and "WhatsApp number" in event.payload["reason"]

    await identities.update_identity(db, b, settings={"start_conversations": True})
    assert (await webhook(NUMBER_B, "34600111222", "hello again"))["stored"] == 1
    on_bot = await webhook(BOT_NUMBER, "34600333444", "hi bot")  # the installation's number
    assert on_bot["stored"] == 1
    conversations = await _conversations(db)
    assert [c.identity_id == b for c in conversations] == [True, False]
    assert conversations[1].campaign_version_id == conversations[0].campaign_version_id
    for conversation in conversations:  # each answers from the number it was started on
        await executor.begin_run(rt, conversation.id, None)
        await _until_waiting(rt, conversation.id)
    assert {r["to"] for r in fake.sent_from(NUMBER_B)} == {"34600111222"}
    assert {r["to"] for r in fake.sent_from(BOT_NUMBER)} == {"34600333444"}


async def test_two_identities_cannot_claim_the_same_whatsapp_number(db: Database) -> None:
    a = await _whatsapp_identity(db, NUMBER_A)  # its address is its phone number id
    with pytest.raises(AlreadyExists, match=f"{NUMBER_A} belongs to identity {a}"):
        await _whatsapp_identity(db, "+34911000111", phone_number_id=NUMBER_A)
    with pytest.raises(AlreadyExists, match=f"{NUMBER_A} belongs to identity {a}"):
        await identities.add_identity(
            db, "linkedin", "seat-1", settings={"whatsapp": {"phone_number_id": NUMBER_A}}
        )
    seat = await identities.add_identity(
        db, "linkedin", "seat-1", settings={"whatsapp": {"phone_number_id": SEAT_NUMBER}}
    )
    with pytest.raises(AlreadyExists, match=f"{SEAT_NUMBER} belongs to identity {seat['id']}"):
        await _whatsapp_identity(db, SEAT_NUMBER)
    b = await _whatsapp_identity(db, "+34911000222", phone_number_id=NUMBER_B)
    with pytest.raises(AlreadyExists):
        await identities.update_identity(db, b, settings={"phone_number_id": NUMBER_A})
    with pytest.raises(InvalidInput, match="not a WhatsApp phone number id"):
        await identities.update_identity(db, b, settings={"phone_number_id": "+34 911"})
    with pytest.raises(InvalidInput, match="display number"):  # which id would it send from?
        await _whatsapp_identity(db, "+34911000333")
    unchanged = [i for i in await identities.list_identities(db) if i["id"] == b]
    assert unchanged[0]["settings"] == {"phone_number_id": NUMBER_B}
    # Its own number again is no conflict with itself.
    await identities.update_identity(db, b, settings={"phone_number_id": NUMBER_B, "x": 1})

    async with operator_api(db, identity_routes.router) as api:
        taken = {"channel": "whatsapp", "address": "+34911000999", "settings": {}}
        taken["settings"] = {"phone_number_id": NUMBER_B}
        refused = await api.post("/api/identities", json=taken)
        assert refused.status_code == 409 and NUMBER_B in refused.json()["detail"]
        patched = await api.patch(
            f"/api/identities/{seat['id']}",
            json={"settings": {"whatsapp": {"phone_number_id": NUMBER_A}}},
        )
        assert patched.status_code == 409 and NUMBER_A in patched.json()["detail"]
        invalid = await api.post(
            "/api/identities",
            json={
                "channel": "whatsapp",
                "address": "+34911000998",
                "settings": {"phone_number_id": "abc"},
            },
        )
        assert invalid.status_code == 422


async def test_cli_refuses_a_whatsapp_number_another_identity_has(
    cli_db: Database,
) -> None:
    first = await cli("identity", "add", "whatsapp", NUMBER_A)
    assert first.exit_code == 0, first.output
    settings = json.dumps({"whatsapp": {"phone_number_id": NUMBER_A}})
    refused = await cli("identity", "add", "linkedin", "seat-1", "--settings-json", settings)
    assert refused.exit_code == 1 and f"{NUMBER_A} belongs to identity" in refused.output
    listed = json.loads((await cli("identity", "list", "--json")).output)
    assert [row["address"] for row in listed] == [NUMBER_A]
