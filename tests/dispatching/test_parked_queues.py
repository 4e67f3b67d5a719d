"""Parked queues can always be unparked, and unpark themselves: every queue that can be parked
(``linkedin``, ``credits``, ``whatsapp``, ``email-{mailbox}`` — a LinkedIn seat's fallback
mailbox too) is reconnected by the command ``identity show`` prints, over the CLI and REST; the
dispatcher asks the provider itself (the gateway's account status, an SMTP login, the WhatsApp
token) and unparks in order when the account works again; actions queued while their queue is
parked are parked at once, never tried; InMail credits park InMails only; WhatsApp's 131056
waits out that pair only. On SQLite and PostgreSQL, against the loopback providers, on a driven
clock."""

from __future__ import annotations

import asyncio
import json
import random
import shlex
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow
from sqlalchemy import select
from typer.testing import CliRunner

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.fakes.smtp_server import LoopbackSMTPServer
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.email.channel import EmailChannel
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.cli import app
from parley.clock import DrivenClock
from parley.conversation import executor, lifecycle
from parley.conversation.http_action import post_json
from parley.db import Database, queries
from parley.db.models import Action, Identity
from parley.errors import InvalidInput
from parley.outreach import actions, dispatch, identities
from parley.runtime import Runtime
from tests.dispatching.test_outreach import _until_waiting
from tests.operator_api import operator_api
from webhook.routes import identities as identity_routes

TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
PHONE_ID = "100000000000777"
TOKEN = "wa-token"
EVERY = timedelta(minutes=5)
API_KEY = "operator-key-for-parked-tests-0123"
LINKEDIN_TYPES = (
    "linkedin_profile_visit",
    "linkedin_connection",
    "linkedin_message",
    "linkedin_inmail",
)
NO_SPACING = {
    "actions": {kind: {"spacing": "0s"} for kind in (*LINKEDIN_TYPES, "email", "whatsapp_template")}
}
runner = CliRunner()


# --- the providers and the runtime -------------------------------------------------------------


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
    server.require_auth("me@example.com", "app-password")
    yield server
    server.stop()


@pytest.fixture
def whatsapp() -> Iterator[FakeWhatsAppAPI]:
    api = FakeWhatsAppAPI(access_token=TOKEN, phone_number_id=PHONE_ID)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def clock(tmp_path: Path) -> DrivenClock:
    driven = DrivenClock(tmp_path / "offset")
    driven.set_offset(TUESDAY_10 - datetime.now(UTC))
    return driven


@pytest.fixture
async def rt(db: Database, clock: DrivenClock, whatsapp: FakeWhatsAppAPI) -> AsyncIterator[Runtime]:
    config = WhatsAppConfig(whatsapp.api_url, TOKEN, PHONE_ID, "secret", "verify", 5)
    runtime = Runtime(
        db=db,
        channels={},
        post_json=post_json,
        campaigns=CampaignCache(),
        clock=clock,
        outreach={
            "linkedin": LinkedInChannel(LinkedInConfig()),
            "email": EmailChannel(),
            "whatsapp": WhatsAppChannel(config),
        },
    )
    yield runtime
    for provider in runtime.outreach.values():
        await provider.aclose()


def _seeded() -> random.Random:
    return random.Random(7)


async def _seat(db: Database, gateway: FakeLinkedInGateway, **settings: Any) -> int:
    added = await identities.add_identity(
        db,
        "linkedin",
        gateway.sender().address,
        policy={"limits": NO_SPACING},
        settings={**gateway.sender().settings, **settings},
    )
    return int(added["id"])


async def _mailbox(db: Database, smtp: LoopbackSMTPServer) -> int:
    added = await identities.add_identity(
        db, "email", "me@example.com", policy={"limits": NO_SPACING}, settings=smtp.smtp_settings()
    )
    return int(added["id"])


async def _number(db: Database) -> int:
    added = await identities.add_identity(db, "whatsapp", PHONE_ID, policy={"limits": NO_SPACING})
    return int(added["id"])


async def _queue(
    db: Database, identity_id: int, kind: str, at: datetime, *, to: str = "lead-1"
) -> int:
    channel = {"email": "email", "whatsapp_template": "whatsapp"}.get(kind, "linkedin")
    async with db.transaction() as session:
        action = Action(
            identity_id=identity_id,
            channel=channel,
            type=kind,
            payload={"to": to, "text": "Hello", "subject": "Parley", "template": "winback_1"},
            not_before=at,
            idempotency_key=uuid.uuid4().hex,
        )
        session.add(action)
        await session.flush()
        return action.id


async def _actions(db: Database, identity_id: int) -> list[Action]:
    async with db.read() as session:
        stmt = select(Action).where(Action.identity_id == identity_id).order_by(Action.id)
        return list((await session.scalars(stmt)).all())


async def _ready_ids(db: Database, identity_id: int) -> list[int]:
    async with db.read() as session:
        stmt = (
            select(Action.id)
            .where(Action.identity_id == identity_id, Action.queue == "ready")
            .where(Action.status == "queued")
            .order_by(Action.not_before, Action.id)
        )
        return list((await session.scalars(stmt)).all())


async def _parked_map(db: Database, identity_id: int) -> dict[str, Any]:
    async with db.read() as session:
        identity = await session.get(Identity, identity_id)
        assert identity is not None
        return dict(identity.parked)


async def _park(db: Database, identity_id: int, channel: str, queue: str, n: int) -> list[int]:
    """``n`` queued actions on ``channel``, parked in ``queue`` by the product's own path."""
    kind = {"email": "email", "whatsapp": "whatsapp_template"}.get(channel, "linkedin_inmail")
    ids = [await _queue(db, identity_id, kind, TUESDAY_10 + timedelta(seconds=i)) for i in range(n)]
    async with db.transaction() as session:
        identity = await queries.identities.lock_identity(session, identity_id)
        await actions.park(session, identity, channel, queue, f"{queue} is down", TUESDAY_10)
    return ids


async def cli(*arguments: str) -> Any:
    return await asyncio.to_thread(runner.invoke, app, list(arguments))


# --- 1. every parked queue can be reconnected, by the command `identity show` prints -----------


QUEUE_KINDS = {
    # name: (identity channel, parked channel, queue); {mailbox} is the fallback mailbox
    "linkedin session": ("linkedin", "linkedin", "linkedin"),
    "inmail credits": ("linkedin", "linkedin", "credits"),
    "whatsapp token": ("whatsapp", "whatsapp", "whatsapp"),
    "mailbox": ("email", "email", "email-me@example.com"),
    "a linkedin seat's fallback mailbox": ("linkedin", "email", "email-sdr@example.com"),
}


async def _identity_of_kind(db: Database, channel: str, address: str) -> int:
    settings: dict[str, Any] = {}
    if channel == "linkedin":
        settings = {"account_id": address, "email": {"address": "sdr@example.com"}}
    added = await identities.add_identity(db, channel, address, settings=settings)
    return int(added["id"])


_ADDRESS = {"linkedin": "seat-cli", "whatsapp": PHONE_ID, "email": "me@example.com"}


@pytest.mark.parametrize("kind", sorted(QUEUE_KINDS))
async def test_every_parked_queue_is_reconnected_by_the_command_identity_show_prints(
    cli_db: Database, kind: str
) -> None:
    channel, parked_channel, queue = QUEUE_KINDS[kind]
    identity_id = await _identity_of_kind(cli_db, channel, _ADDRESS[channel])
    parked_ids = await _park(cli_db, identity_id, parked_channel, queue, 2)
    assert list(await _parked_map(cli_db, identity_id)) == [queue]

    shown = await cli("identity", "show", str(identity_id))
    assert shown.exit_code == 0, shown.output
    [line] = [line for line in shown.output.splitlines() if "now: parley identity" in line]
    command = shlex.split(line.split("now: ", 1)[1])
    assert command == ["parley", "identity", "reconnect", str(identity_id), queue]
    detail = json.loads((await cli("identity", "show", str(identity_id), "--json")).output)
    assert detail["unpark"][queue]["command"] == shlex.join(command)
    assert shlex.join(command) in detail["status"]["sentence"]

    reconnected = await cli(*command[1:], "--json")
    assert reconnected.exit_code == 0, reconnected.output
    assert json.loads(reconnected.output)["unparked"] == 2
    assert await _ready_ids(cli_db, identity_id) == parked_ids
    assert await _parked_map(cli_db, identity_id) == {}


@pytest.mark.parametrize("kind", sorted(QUEUE_KINDS))
async def test_every_parked_queue_is_reconnected_over_rest(db: Database, kind: str) -> None:
    channel, parked_channel, queue = QUEUE_KINDS[kind]
    identity_id = await _identity_of_kind(db, channel, _ADDRESS[channel])
    parked_ids = await _park(db, identity_id, parked_channel, queue, 3)
    async with operator_api(db, identity_routes.router, api_key=API_KEY) as api:
        shown = await api.get(f"/api/identities/{identity_id}")
        assert shown.status_code == 200, shown.text
        call = shown.json()["unpark"][queue]["rest"]
        assert call["path"] == f"/api/identities/{identity_id}/reconnect"
        answer = await api.post(call["path"], json=call["body"])
        assert answer.status_code == 200, answer.text
        assert answer.json()["unparked"] == 3
        assert (await api.get(f"/api/identities/{identity_id}")).json()["unpark"] == {}
    assert await _ready_ids(db, identity_id) == parked_ids


async def test_email_names_a_linkedin_seats_fallback_mailbox_and_a_typo_is_refused(
    db: Database,
) -> None:
    seat = await _identity_of_kind(db, "linkedin", "seat-fallback")
    mail = await _park(db, seat, "email", "email-sdr@example.com", 1)
    assert await identities.reconnect(db, seat, "email") == 1
    assert await _ready_ids(db, seat) == mail
    assert await identities.reconnect(db, seat, "email") == 0  # its own mailbox: harmless
    with pytest.raises(InvalidInput, match="cannot be reconnected"):
        await identities.reconnect(db, seat, "email-someone-else@example.com")
    with pytest.raises(InvalidInput, match="cannot be reconnected"):
        await identities.reconnect(db, seat, "sms")


# --- 2. the dispatcher unparks a seat that works again --------------------------------------------


async def _look(rt: Runtime) -> dict[str, int]:
    from parley.outreach import parked  # here: each scenario fails on its own on a main without it

    return dict(await parked.check_parked_queues(rt, EVERY))


async def test_a_parked_linkedin_seat_unparks_by_itself_once_the_gateway_says_it_is_healthy(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    seat = await _seat(db, gateway)
    queued = [
        await _queue(db, seat, kind, TUESDAY_10 - timedelta(minutes=10 - i))
        for i, kind in enumerate(("linkedin_connection", "linkedin_message", "linkedin_message"))
    ]
    gateway.expire_session(gateway.sender().address)
    assert await dispatch.perform_next(rt, seat, _seeded()) == "parked"
    assert list(await _parked_map(db, seat)) == ["linkedin"]

    assert await _look(rt) == {}  # just parked: the first look is an interval later
    assert gateway.requests("status") == 0
    clock.advance(EVERY)
    assert await _look(rt) == {"still parked": 1}  # the gateway still says "expired"
    assert await _look(rt) == {}  # at most once per interval, however often the tick runs
    assert gateway.requests("status") == 1
    entry = (await _parked_map(db, seat))["linkedin"]
    assert "expired" in entry["check"] and entry["checked_at"]
    assert (await identities.explain(db, seat))["unpark"]["linkedin"]["check"] == entry["check"]
    assert await _ready_ids(db, seat) == []

    gateway.renew_session(gateway.sender().address)
    clock.advance(EVERY)
    assert await _look(rt) == {"unparked": 1}
    assert await _parked_map(db, seat) == {}
    assert await _ready_ids(db, seat) == queued  # in their order
    performed_before = gateway.requests("action")
    for _ in queued:
        assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    assert [a.outcome for a in await _actions(db, seat)] == ["sent"] * 3
    assert [a.to for a in gateway.performed] == ["lead-1"] * 3
    assert gateway.requests("action") == performed_before + 3


async def test_a_seat_whose_gateway_does_not_answer_stays_parked_and_is_asked_again(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    seat = await _seat(db, gateway, gateway_url="http://127.0.0.1:9")  # nothing listens
    await _queue(db, seat, "linkedin_message", TUESDAY_10)
    async with db.transaction() as session:
        identity = await queries.identities.lock_identity(session, seat)
        await actions.park(session, identity, "linkedin", "linkedin", "expired", clock.now())
    clock.advance(EVERY)
    assert await _look(rt) == {"no answer": 1}
    assert (await _parked_map(db, seat))["linkedin"]["check"] == "no answer from the provider"
    clock.advance(EVERY)
    assert await _look(rt) == {"no answer": 1}
    assert await _ready_ids(db, seat) == []


async def test_a_parked_mailbox_unparks_by_itself_once_its_smtp_login_is_accepted(
    db: Database, rt: Runtime, smtp: LoopbackSMTPServer, clock: DrivenClock
) -> None:
    mailbox = await _mailbox(db, smtp)
    queued = [
        await _queue(db, mailbox, "email", TUESDAY_10 - timedelta(minutes=i), to=f"l{i}@x.io")
        for i in (2, 1)
    ]
    smtp.refuse_logins()  # the provider locked the account
    assert await dispatch.perform_next(rt, mailbox, _seeded()) == "parked"
    queue = "email-me@example.com"
    assert list(await _parked_map(db, mailbox)) == [queue]
    assert smtp.messages == []

    clock.advance(EVERY)
    assert await _look(rt) == {"still parked": 1}
    assert "535" in (await _parked_map(db, mailbox))[queue]["check"]
    smtp.accept_logins()
    clock.advance(EVERY)
    assert await _look(rt) == {"unparked": 1}
    assert await _ready_ids(db, mailbox) == queued
    assert smtp.messages == []  # the look logged in and sent nothing
    for _ in queued:
        assert await dispatch.perform_next(rt, mailbox, _seeded()) == "sent"
    assert [m.rcpt_tos for m in smtp.messages] == [("l2@x.io",), ("l1@x.io",)]
    assert {m.login for m in smtp.messages} == {"me@example.com"}


async def test_a_parked_whatsapp_number_unparks_by_itself_once_its_token_works(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, clock: DrivenClock
) -> None:
    number = await _number(db)
    queued = [
        await _queue(db, number, "whatsapp_template", TUESDAY_10 - timedelta(minutes=i), to=to)
        for i, to in ((2, "34600000001"), (1, "34600000002"))
    ]
    whatsapp.expire_token()
    assert await dispatch.perform_next(rt, number, _seeded()) == "parked"
    assert list(await _parked_map(db, number)) == ["whatsapp"]

    clock.advance(EVERY)
    assert await _look(rt) == {"still parked": 1}
    check = (await _parked_map(db, number))["whatsapp"]["check"]
    assert "code 190" in check and "Session has expired" in check
    whatsapp.renew_token()
    clock.advance(EVERY)
    assert await _look(rt) == {"unparked": 1}
    assert await _ready_ids(db, number) == queued
    for _ in queued:
        assert await dispatch.perform_next(rt, number, _seeded()) == "sent"
    assert [r["to"] for r in whatsapp.received] == ["34600000001", "34600000002"]


async def test_the_dispatcher_tick_looks_at_parked_queues_in_the_background(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    seat = await _seat(db, gateway)
    action = await _queue(db, seat, "linkedin_message", TUESDAY_10)
    async with db.transaction() as session:
        identity = await queries.identities.lock_identity(session, seat)
        await actions.park(session, identity, "linkedin", "linkedin", "expired", clock.now())
    clock.advance(EVERY)
    from prefect_adapter.outreach_tick import ParkedChecks

    checks = ParkedChecks(EVERY.total_seconds())
    seen: dict[str, int] = {}
    try:
        async with asyncio.timeout(20):
            while "parked queue unparked" not in seen:
                seen.update(checks.poke(rt))  # what the dispatcher's tick does
                await asyncio.sleep(0.05)
    finally:
        await checks.aclose()
    assert await _ready_ids(db, seat) == [action]


# --- 3. new actions of a parked queue are parked at once ------------------------------------------

SEQUENCE = """
name: parked-sequence
channel: linkedin
inputs: [first_name]
start: connect
nodes:
  - {id: connect, type: send, action: linkedin_connection, text: "Hi {first_name}"}
  - {id: done, type: end}
edges:
  - {from: connect, to: done}
"""


async def _lead(db: Database, rt: Runtime, campaign: str, seat: int, n: int) -> int:
    change = await lifecycle.start(
        db, campaign, seat, channel="linkedin", address=f"lead-{n}", variables={"first_name": "A"}
    )
    await executor.begin_run(rt, change.conversation_id, None)
    await _until_waiting(rt, change.conversation_id)
    return change.conversation_id


async def test_new_actions_of_a_parked_queue_are_parked_at_once_behind_the_parked_ones(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, tmp_path: Path
) -> None:
    path = tmp_path / "sequence.yaml"
    path.write_text(SEQUENCE)
    async with db.transaction() as session:
        campaign = (await install_campaign(session, path)).name
    seat = await _seat(db, gateway)
    for n in (1, 2):
        await _lead(db, rt, campaign, seat, n)
    gateway.expire_session(gateway.sender().address)
    assert await dispatch.perform_next(rt, seat, _seeded()) == "parked"
    older = [a.id for a in await _actions(db, seat)]

    await _lead(db, rt, campaign, seat, 3)  # queued while the session is known to be expired
    newest = (await _actions(db, seat))[-1]
    assert newest.id not in older
    assert (newest.queue, newest.status) == ("linkedin", "queued")
    assert newest.reason is not None and "'linkedin' is parked" in newest.reason
    tried = gateway.requests("action")
    assert await dispatch.perform_next(rt, seat, _seeded()) == "idle"
    assert gateway.requests("action") == tried  # nothing was tried against the expired session

    gateway.renew_session(gateway.sender().address)
    assert await identities.reconnect(db, seat, "linkedin") == 3
    assert await _ready_ids(db, seat) == [*older, newest.id]  # behind the parked ones
    for _ in range(3):
        assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    assert [a.to for a in gateway.performed] == ["lead-1", "lead-2", "lead-3"]


async def test_an_action_that_was_ready_when_its_queue_parked_is_parked_at_its_claim_untried(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway
) -> None:
    """The enqueue raced the parking (it read the identity before the park committed)."""
    seat = await _seat(db, gateway)
    async with db.transaction() as session:
        identity = await queries.identities.lock_identity(session, seat)
        await actions.park(session, identity, "linkedin", "linkedin", "expired", TUESDAY_10)
    late = await _queue(db, seat, "linkedin_message", TUESDAY_10)  # in "ready" nevertheless
    assert await dispatch.perform_next(rt, seat, _seeded()) == "parked"
    [action] = await _actions(db, seat)
    assert (action.id, action.queue, action.status, action.attempts) == (
        late,
        "linkedin",
        "queued",
        0,
    )
    assert gateway.requests("action") == 0


# --- 4. credits park InMails only; 131056 waits out one pair ------------------------------------


async def test_inmail_credits_running_out_parks_inmails_only(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    seat = await _seat(db, gateway)
    gateway.set_inmail_credits(gateway.sender().address, 0)
    start = TUESDAY_10 - timedelta(minutes=10)
    inmail = await _queue(db, seat, "linkedin_inmail", start)
    others = [
        await _queue(db, seat, kind, start + timedelta(seconds=i + 1), to=f"lead-{i}")
        for i, kind in enumerate(LINKEDIN_TYPES[:3])
    ]
    second_inmail = await _queue(db, seat, "linkedin_inmail", start + timedelta(seconds=9))

    assert await dispatch.perform_next(rt, seat, _seeded()) == "parked"
    assert list(await _parked_map(db, seat)) == ["credits"]
    by_id = {a.id: a for a in await _actions(db, seat)}
    assert [by_id[i].queue for i in (inmail, second_inmail)] == ["credits", "credits"]
    assert await _ready_ids(db, seat) == others  # messages, invitations and visits keep going
    for _ in others:
        assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    assert await dispatch.perform_next(rt, seat, _seeded()) == "idle"
    assert sorted(a.kind for a in gateway.performed) == ["invitation", "message", "profile_visit"]

    gateway.set_inmail_credits(gateway.sender().address, 3)  # the month's credits came
    clock.advance(EVERY)
    assert await _look(rt) == {"unparked": 1}
    for _ in (inmail, second_inmail):
        assert await dispatch.perform_next(rt, seat, _seeded()) == "sent"
    assert gateway.account(gateway.sender().address).inmail_credits == 1


async def test_inmail_credits_stay_parked_while_the_gateway_reports_none(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    seat = await _seat(db, gateway)
    gateway.set_inmail_credits(gateway.sender().address, 0)
    await _queue(db, seat, "linkedin_inmail", TUESDAY_10)
    assert await dispatch.perform_next(rt, seat, _seeded()) == "parked"
    clock.advance(EVERY)
    assert await _look(rt) == {"still parked": 1}
    assert "no InMail credits" in (await _parked_map(db, seat))["credits"]["check"]


async def test_whatsapp_131056_waits_out_that_pair_only_not_the_template_type(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, clock: DrivenClock
) -> None:
    number = await _number(db)
    start = TUESDAY_10 - timedelta(minutes=5)
    paced = await _queue(db, number, "whatsapp_template", start, to="34600000001")
    other_lead = await _queue(db, number, "whatsapp_template", start, to="34600000002")
    same_lead = await _queue(db, number, "whatsapp_template", start, to="34600000001")
    whatsapp.fail_next(131056, 400)

    assert await dispatch.perform_next(rt, number, _seeded()) == "retrying"
    async with db.read() as session:
        identity = await session.get(Identity, number)
        assert identity is not None and identity.blocked_until == {}  # the type is not blocked
    by_id = {a.id: a for a in await _actions(db, number)}
    assert by_id[paced].not_before > clock.now() and "131056" in (by_id[paced].reason or "")
    assert by_id[same_lead].not_before >= by_id[paced].not_before  # the pair waits
    assert await dispatch.perform_next(rt, number, _seeded()) == "sent"  # another lead: now
    assert [r["to"] for r in whatsapp.received] == ["34600000002"]
    assert await dispatch.perform_next(rt, number, _seeded()) == "idle"

    clock.advance(by_id[same_lead].not_before - clock.now() + timedelta(seconds=1))
    for _ in range(2):
        assert await dispatch.perform_next(rt, number, _seeded()) == "sent"
    assert [r["to"] for r in whatsapp.received] == ["34600000002", *["34600000001"] * 2]
    assert other_lead in {a.id for a in await _actions(db, number) if a.outcome == "sent"}


async def test_the_whatsapp_fake_answers_the_phone_number_object_and_an_expired_token(
    whatsapp: FakeWhatsAppAPI,
) -> None:
    async with httpx.AsyncClient() as http:
        url = f"{whatsapp.api_url}/{PHONE_ID}"
        number = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert number.status_code == 200 and number.json()["id"] == PHONE_ID
        whatsapp.expire_token()
        expired = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert expired.status_code == 401
        error = expired.json()["error"]
        assert (error["type"], error["code"], error["error_subcode"]) == (
            "OAuthException",
            190,
            463,
        )
        renewed = await http.post(f"{whatsapp.base_url}/_fake/token", json={"expired": False})
        assert renewed.status_code == 200  # other processes (parley dev) drive it this way
        again = await http.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert again.status_code == 200
        wrong = await http.get(url, headers={"Authorization": "Bearer another"})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, 190)
        unknown = await http.get(
            f"{whatsapp.api_url}/100000000000999", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, 100)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_the_dispatcher_unparks_a_seat_that_works_again_and_performs_its_actions(
    prefect_server: str,
    db: Database,
    rt: Runtime,
    gateway: FakeLinkedInGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real dispatcher loop (``flows.dispatcher._Ticks``) against a real Prefect API: the
    seat's session was renewed at the gateway and nobody told Parley."""
    import prefect_adapter.outreach_tick
    from flows import dispatcher as dispatcher_flow
    from parley.settings import Settings

    seat = await _seat(db, gateway)
    queued = [
        await _queue(db, seat, "linkedin_message", TUESDAY_10 - timedelta(minutes=2 - i))
        for i in range(2)
    ]
    async with db.transaction() as session:
        identity = await queries.identities.lock_identity(session, seat)
        await actions.park(session, identity, "linkedin", "linkedin", "expired", rt.clock.now())
    name = f"parked-{uuid.uuid4().hex[:8]}"
    deployment = await dispatcher_flow.dispatcher.ato_deployment(name=name)
    await deployment.aapply()  # type: ignore[union-attr]  # its dead runs are looked for
    settings = Settings(
        dispatcher_deployment=f"dispatcher/{name}",
        dispatcher_tick_seconds=0.2,
        dispatcher_interval_seconds=600,
        dispatcher_limit=f"parley-dispatcher-{name}",
        parked_health_check_seconds=1,
    )

    async def the_runtime() -> Runtime:
        return rt

    monkeypatch.setattr(dispatcher_flow, "get_runtime", the_runtime)
    monkeypatch.setattr(prefect_adapter.outreach_tick, "_signal", None)

    @flow(name="dispatcher-ticks-under-test")
    async def ticks() -> dict[str, int]:
        return dict(await dispatcher_flow._Ticks(settings).run())

    running = asyncio.create_task(ticks())
    try:
        async with asyncio.timeout(90):
            while [a.outcome for a in await _actions(db, seat)] != ["sent", "sent"]:
                if running.done():
                    running.result()  # its error, if it died
                await asyncio.sleep(0.2)
    finally:
        rt.stopping = True
        async with db.transaction() as session:  # wakes the loop, which sees it must stop
            await queries.actions.notify_action_ready(session, seat)
        totals: dict[str, Any] = await asyncio.wait_for(running, 60)
        await prefect_adapter.outreach_tick.action_signal(rt).close()
    assert await _parked_map(db, seat) == {}
    assert [a.id for a in sorted(await _actions(db, seat), key=lambda a: a.performed_at)] == queued
    assert gateway.requests("status") >= 1
    assert totals.get("action sent") == 2, totals
