"""The outreach channels' webhook routes, ``POST /webhooks/linkedin`` and ``POST /webhooks/email``,
on SQLite and PostgreSQL: the real app (``webhook.app.create_app``) over HTTP — in-process
through ``httpx.ASGITransport``, and once over loopback TCP with the fake gateway posting its
signed webhooks. Wake-ups are recorded instead of reaching Prefect (the e2e tests do that).

A lead's reply reaches their active conversation and resumes its suspended run; anyone else's
is recorded, never the start of an onboarding conversation. Accepted connections become a
``linkedin_connected`` signal, expired sessions park the seat's LinkedIn actions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select

import prefect_adapter.composition as composition
import webhook.app as webhook_app
from devkit.fakes import email_payloads
from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.fakes.linkedin_payloads import (
    build_invitation_accepted,
    build_message_received,
    build_session_expired,
    signed_request,
)
from devkit.stack.processes import free_port
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.email.channel import EmailChannel, EmailConfig
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.channels.linkedin.wire import SIGNATURE_HEADER, sign
from parley.conversation import executor, handshake, lifecycle
from parley.conversation.handshake import WakeUp
from parley.conversation.http_action import post_json
from parley.conversation.lifecycle import Change
from parley.db import Database, queries
from parley.db.models import Action, Contact, Conversation, Identity, Message
from parley.runtime import Runtime
from parley.settings import Settings
from parley.vocabulary import Status
from webhook import deps
from webhook.routes import linkedin as linkedin_route

ROOT = Path(__file__).resolve().parents[2]
LINKEDIN_SECRET = "test-linkedin-webhook-secret"
EMAIL_SECRET = "test-email-webhook-secret"
SEAT = "seat-ada"
LEAD = "urn:li:fsd_profile:ACoAAB1234567"
STRANGER = "urn:li:fsd_profile:ACoAAStranger"
MAILBOX = "ada@parley.example"
EMAIL_LEAD = "bob@example.com"
FLOW_RUN = str(uuid.uuid4())

# Waits for the lead: a reply, an accepted connection (the field the signal sets) or 3 days.
CAMPAIGN = """
name: {name}
channel: {channel}
start: wait_accept
nodes:
  - {{id: wait_accept, type: wait_for_reply, timeout: 3d}}
  - {{id: replied, type: end}}
  - {{id: connected, type: end}}
  - {{id: quiet, type: end}}
edges:
  - {{from: wait_accept, to: replied, when: replied}}
  - {{from: wait_accept, to: connected, when: {{field: linkedin_connected, exists: true}}}}
  - {{from: wait_accept, to: quiet, when: no_reply}}
"""

# The same wait as the example's: a branch, left when the invitation is accepted or in 3 days.
ACCEPTANCE = """
name: {name}
channel: {channel}
start: wait_accept
nodes:
  - {{id: wait_accept, type: branch}}
  - {{id: connected, type: end}}
  - {{id: quiet, type: end}}
edges:
  - {{from: wait_accept, to: connected, when: connection_accepted}}
  - {{from: wait_accept, to: quiet, when: {{time_passed: 3d}}}}
"""


class Woken:
    """What the routes asked of Prefect after answering: wake-ups and carried-out changes."""

    def __init__(self) -> None:
        self.wakeups: list[WakeUp] = []
        self.changes: list[Change] = []

    async def wake(self, _db: Database, _settings: Settings, wakeup: WakeUp) -> None:
        self.wakeups.append(wakeup)

    async def carry_out(self, _db: Database, _settings: Settings, change: Change) -> bool:
        self.changes.append(change)
        return True


@pytest.fixture
def woken(monkeypatch: pytest.MonkeyPatch) -> Woken:
    recorder = Woken()
    monkeypatch.setattr(deps, "wake", recorder.wake)
    monkeypatch.setattr(linkedin_route, "carry_out", recorder.carry_out)
    return recorder


@pytest.fixture
async def application(db: Database, woken: Woken) -> AsyncIterator[FastAPI]:
    """The real app with what its lifespan would put on ``app.state`` (the lifespan itself
    resolves the database through Prefect; ``test_the_lifespan_builds_...`` covers it)."""
    app = webhook_app.create_app()
    app.state.db = db
    app.state.settings = Settings(
        linkedin_webhook_secret=LINKEDIN_SECRET, email_webhook_secret=EMAIL_SECRET
    )
    app.state.linkedin = LinkedInChannel(LinkedInConfig(webhook_secret=LINKEDIN_SECRET))
    app.state.email = EmailChannel(EmailConfig(webhook_secret=EMAIL_SECRET))
    app.state.campaign_name = "onboarding"
    yield app
    await app.state.linkedin.aclose()


@pytest.fixture
async def client(application: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://parley") as http:
        yield http


@pytest.fixture
def rt(db: Database) -> Runtime:
    return Runtime(
        db=db, channels={}, post_json=post_json, campaigns=CampaignCache(), lease_seconds=5
    )


async def _campaign(db: Database, tmp_path: Path, channel: str, source: str = CAMPAIGN) -> str:
    path = tmp_path / f"{channel}.yaml"
    path.write_text(source.format(name=f"{channel}-wait", channel=channel))
    async with db.transaction() as session:
        return (await install_campaign(session, path)).name


async def _identity(db: Database, channel: str, address: str) -> int:
    async with db.transaction() as session:
        identity = Identity(channel=channel, address=address, timezone="UTC")
        session.add(identity)
        await session.flush()
        return identity.id


async def _waiting_lead(
    db: Database,
    rt: Runtime,
    tmp_path: Path,
    channel: str,
    seat: str,
    lead: str,
    source: str = CAMPAIGN,
) -> tuple[int, int]:
    """(identity id, conversation id): the lead's conversation, suspended at ``wait_accept``."""
    campaign = await _campaign(db, tmp_path, channel, source)
    identity_id = await _identity(db, channel, seat)
    change = await lifecycle.start(db, campaign, identity_id, channel=channel, address=lead)
    cursor = await executor.begin_run(rt, change.conversation_id, FLOW_RUN)
    for _ in range(5):
        if cursor.wait is not None:
            break
        cursor = await executor.run_step(rt, change.conversation_id, cursor.step)
    assert cursor.node == "wait_accept" and cursor.wait is not None, cursor
    decision = await handshake.prepare_suspend(rt, change.conversation_id, cursor.step)
    assert decision.suspend
    return identity_id, change.conversation_id


async def _conversation(db: Database, conversation_id: int) -> Conversation:
    async with db.read() as session:
        return await queries.conversations.get_conversation(session, conversation_id)


async def _inbound(db: Database, conversation_id: int) -> list[Message]:
    async with db.read() as session:
        return [
            m
            for m in await queries.messages.transcript(session, conversation_id)
            if m.direction == "in"
        ]


async def _count(db: Database, model: type[Any]) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def _events(db: Database, kind: str) -> int:
    async with db.read() as session:
        return await queries.webhook_events.count_webhook_events(session, kind)


def _lead_writes(text: str = "Sure, let's talk", **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"account_id": SEAT, "from_profile": LEAD, "text": text}
    return build_message_received(**(values | fields))


async def _post_linkedin(client: httpx.AsyncClient, payload: Any) -> httpx.Response:
    body, headers = signed_request(payload, LINKEDIN_SECRET)
    return await client.post("/webhooks/linkedin", content=body, headers=headers)


async def _post_email(client: httpx.AsyncClient, payload: Any) -> httpx.Response:
    body, headers = email_payloads.signed_request(payload, EMAIL_SECRET)
    return await client.post("/webhooks/email", content=body, headers=headers)


# --- LinkedIn: messages -----------------------------------------------------------------------


async def test_a_leads_linkedin_message_reaches_their_conversation_and_resumes_its_run(
    db: Database, rt: Runtime, tmp_path: Path, client: httpx.AsyncClient, woken: Woken
) -> None:
    _, cid = await _waiting_lead(db, rt, tmp_path, "linkedin", SEAT, LEAD)

    response = await _post_linkedin(client, _lead_writes(message_id="msg_in_1"))

    assert response.status_code == 200, response.text
    assert response.json() | {"stored": 1, "duplicates": 0, "unmatched": 0} == response.json()
    [message] = await _inbound(db, cid)
    assert (message.provider_message_id, message.text) == ("msg_in_1", "Sure, let's talk")
    assert woken.wakeups == [WakeUp(cid, "resume", FLOW_RUN)]


async def test_a_redelivered_linkedin_message_is_stored_once(
    db: Database, rt: Runtime, tmp_path: Path, client: httpx.AsyncClient, woken: Woken
) -> None:
    _, cid = await _waiting_lead(db, rt, tmp_path, "linkedin", SEAT, LEAD)
    payload = _lead_writes(message_id="msg_twice")

    first = await _post_linkedin(client, payload)
    again = await _post_linkedin(client, payload)  # signed again, as the gateway retries

    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.json()["stored"], again.json()["stored"], again.json()["duplicates"]) == (1, 0, 1)
    assert [m.provider_message_id for m in await _inbound(db, cid)] == ["msg_twice"]
    assert woken.wakeups == [WakeUp(cid, "resume", FLOW_RUN)]


async def test_a_message_the_database_cannot_take_is_a_503_and_its_redelivery_is_stored_once(
    db: Database,
    rt: Runtime,
    tmp_path: Path,
    application: FastAPI,
    client: httpx.AsyncClient,
    woken: Woken,
) -> None:
    """The database down (or every pooled connection taken by a burst): a 503 with
    Retry-After, so the gateway delivers again — never a 500 traceback, never a 200 for
    something that was not stored."""
    _, cid = await _waiting_lead(db, rt, tmp_path, "linkedin", SEAT, LEAD)
    payload = _lead_writes(message_id="msg_db_down")
    unreachable = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/parley")
    application.state.db = unreachable
    try:
        refused = await _post_linkedin(client, payload)
    finally:
        application.state.db = db
        await unreachable.dispose()

    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "5"
    assert "deliver this again" in refused.json()["detail"]
    assert await _inbound(db, cid) == [] and woken.wakeups == []

    again = await _post_linkedin(client, payload)
    assert (again.status_code, again.json()["stored"]) == (200, 1)
    assert [m.provider_message_id for m in await _inbound(db, cid)] == ["msg_db_down"]
    assert woken.wakeups == [WakeUp(cid, "resume", FLOW_RUN)]


async def test_a_message_from_someone_without_a_conversation_is_recorded_and_starts_nothing(
    db: Database, tmp_path: Path, client: httpx.AsyncClient, woken: Woken
) -> None:
    await _identity(db, "linkedin", SEAT)

    response = await _post_linkedin(client, _lead_writes(from_profile=STRANGER))
    unknown_seat = await _post_linkedin(client, _lead_writes(account_id="seat-nobody"))

    assert (response.status_code, unknown_seat.status_code) == (200, 200)
    assert response.json()["unmatched"] == unknown_seat.json()["unmatched"] == 1
    assert response.json()["stored"] == 0
    assert await _count(db, Conversation) == 0
    assert await _count(db, Contact) == 0  # the lookup leaves no rows behind
    assert await _count(db, Identity) == 1  # nor an identity for a seat we do not have
    assert await _events(db, "unmatched_message") == 2
    assert woken.wakeups == []


async def test_linkedin_refuses_bad_and_missing_signatures_with_401(
    db: Database, rt: Runtime, tmp_path: Path, client: httpx.AsyncClient, woken: Woken
) -> None:
    _, cid = await _waiting_lead(db, rt, tmp_path, "linkedin", SEAT, LEAD)
    body, _ = signed_request(_lead_writes(), LINKEDIN_SECRET)
    _, forged = signed_request(_lead_writes(), "not-our-secret")

    wrong = await client.post("/webhooks/linkedin", content=body, headers=forged)
    missing = await client.post("/webhooks/linkedin", content=body)

    assert (wrong.status_code, missing.status_code) == (401, 401)
    assert "does not match" in wrong.json()["detail"]
    assert f"missing {SIGNATURE_HEADER}" in missing.json()["detail"]
    assert await _inbound(db, cid) == [] and woken.wakeups == []


async def test_linkedin_refuses_malformed_bodies_with_400_and_the_reason(
    db: Database, rt: Runtime, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    _, cid = await _waiting_lead(db, rt, tmp_path, "linkedin", SEAT, LEAD)
    not_json = b"{not json"

    broken = await client.post(
        "/webhooks/linkedin",
        content=not_json,
        headers={SIGNATURE_HEADER: sign(not_json, LINKEDIN_SECRET)},
    )
    no_sender = _lead_writes()
    del no_sender["data"]["from"]
    incomplete = await _post_linkedin(client, no_sender)

    assert (broken.status_code, incomplete.status_code) == (400, 400)
    assert "not JSON" in broken.json()["detail"]
    assert incomplete.json()["detail"] == "message.received has no 'from'"
    assert await _inbound(db, cid) == []


# --- LinkedIn: account events -----------------------------------------------------------------


async def test_an_accepted_connection_is_recorded_and_signalled_to_the_leads_conversation(
    db: Database, rt: Runtime, tmp_path: Path, client: httpx.AsyncClient, woken: Woken
) -> None:
    _, cid = await _waiting_lead(db, rt, tmp_path, "linkedin", SEAT, LEAD)

    response = await _post_linkedin(
        client, build_invitation_accepted(account_id=SEAT, profile=LEAD, client_ref="conv-1-step-2")
    )

    assert response.status_code == 200, response.text
    assert (response.json()["signalled"], response.json()["ignored"]) == (1, 1)
    row = await _conversation(db, cid)
    async with db.read() as session:
        contact = await queries.contacts.get_contact(session, row.contact_id)
    assert contact.fields["linkedin_connected"] is True
    assert row.wake_requested_at is not None  # the dispatcher finishes it if Prefect cannot
    [change] = woken.changes
    assert (change.conversation_id, change.run, change.flow_run_id) == (cid, "resume", FLOW_RUN)
    assert await _events(db, "connection_accepted") == 1


async def test_an_accepted_connection_resumes_a_run_waiting_on_when_connection_accepted(
    db: Database, rt: Runtime, tmp_path: Path, client: httpx.AsyncClient, woken: Woken
) -> None:
    _, cid = await _waiting_lead(db, rt, tmp_path, "linkedin", SEAT, LEAD, ACCEPTANCE)

    response = await _post_linkedin(
        client, build_invitation_accepted(account_id=SEAT, profile=LEAD)
    )

    assert response.status_code == 200 and response.json()["signalled"] == 1
    [change] = woken.changes
    assert (change.conversation_id, change.run) == (cid, "resume")
    cursor = await executor.begin_run(rt, cid, FLOW_RUN)
    cursor = await executor.run_step(rt, cid, cursor.step)
    assert (cursor.node, cursor.status) == ("connected", Status.COMPLETED)


async def test_an_accepted_connection_without_a_conversation_is_only_recorded(
    db: Database, client: httpx.AsyncClient, woken: Woken
) -> None:
    await _identity(db, "linkedin", SEAT)

    response = await _post_linkedin(
        client, build_invitation_accepted(account_id=SEAT, profile=LEAD)
    )

    assert response.status_code == 200 and response.json()["signalled"] == 0
    assert await _events(db, "connection_accepted") == 1
    assert await _count(db, Conversation) == 0 and woken.changes == []


async def test_an_expired_session_parks_the_seats_linkedin_actions_only(
    db: Database, client: httpx.AsyncClient
) -> None:
    identity_id = await _identity(db, "linkedin", SEAT)
    async with db.transaction() as session:
        for n, (channel, kind) in enumerate(
            [
                ("linkedin", "linkedin_connection"),
                ("linkedin", "linkedin_message"),
                ("email", "email"),
            ]
        ):
            session.add(
                Action(
                    identity_id=identity_id,
                    channel=channel,
                    type=kind,
                    payload={"to": "lead"},
                    not_before=datetime(2026, 12, 8, 10, n, tzinfo=UTC),
                    idempotency_key=f"key-{n}",
                )
            )

    response = await _post_linkedin(
        client, build_session_expired(account_id=SEAT, reason="LinkedIn logged the seat out")
    )

    assert response.status_code == 200, response.text
    assert response.json()["parked"] == 2
    async with db.read() as session:
        identity = await queries.identities.get_identity(session, identity_id)
        rows = list((await session.execute(select(Action).order_by(Action.id))).scalars())
    assert [(a.channel, a.queue) for a in rows] == [
        ("linkedin", "linkedin"),
        ("linkedin", "linkedin"),
        ("email", "ready"),
    ]
    assert "LinkedIn logged the seat out" in identity.parked["linkedin"]["reason"]
    assert await _events(db, "session_expired") == 1
    unknown = await _post_linkedin(client, build_session_expired(account_id="seat-nobody"))
    assert unknown.status_code == 200 and unknown.json()["parked"] == 0


# --- email ------------------------------------------------------------------------------------


def _reply(**fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"recipient": MAILBOX, "sender": EMAIL_LEAD, "text": "Yes, call me."}
    return email_payloads.build_inbound_reply(**(values | fields))


async def test_an_email_reply_reaches_the_leads_conversation_once_and_resumes_its_run(
    db: Database, rt: Runtime, tmp_path: Path, client: httpx.AsyncClient, woken: Woken
) -> None:
    _, cid = await _waiting_lead(db, rt, tmp_path, "email", MAILBOX, EMAIL_LEAD)
    payload = _reply(
        sender="Bob <Bob@Example.com>", message_id="<r1@example.com>", quoted="Hello Bob"
    )

    first = await _post_email(client, payload)
    again = await _post_email(client, payload)

    assert (first.status_code, again.status_code) == (200, 200), first.text
    assert (first.json()["stored"], again.json()["duplicates"]) == (1, 1)
    [message] = await _inbound(db, cid)
    assert (message.provider_message_id, message.text) == ("<r1@example.com>", "Yes, call me.")
    assert woken.wakeups == [WakeUp(cid, "resume", FLOW_RUN)]


async def test_an_email_from_someone_without_a_conversation_is_recorded_and_starts_nothing(
    db: Database, client: httpx.AsyncClient, woken: Woken
) -> None:
    await _identity(db, "email", MAILBOX)

    response = await _post_email(client, _reply(sender="someone@example.org"))

    assert response.status_code == 200 and response.json()["unmatched"] == 1
    assert await _count(db, Conversation) == 0 and await _count(db, Contact) == 0
    assert await _events(db, "unmatched_message") == 1 and woken.wakeups == []


async def test_email_refuses_bad_signatures_401_malformed_400_and_unconfigured_503(
    db: Database, application: FastAPI, client: httpx.AsyncClient
) -> None:
    body, headers = email_payloads.signed_request(_reply(), "not-our-secret")
    forged = await client.post("/webhooks/email", content=body, headers=headers)
    unsigned = await client.post("/webhooks/email", content=body)
    not_json = b"[1, 2"
    signature = email_payloads.sign_inbound(not_json, EMAIL_SECRET)
    broken = await client.post(
        "/webhooks/email", content=not_json, headers={"X-Parley-Signature": signature}
    )
    no_text = await _post_email(client, {**_reply(), "text": None})
    application.state.email = EmailChannel(EmailConfig(webhook_secret=""))
    unconfigured = await _post_email(client, _reply())

    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert (broken.status_code, no_text.status_code) == (400, 400)
    assert "not JSON" in broken.json()["detail"]
    assert no_text.json()["detail"] == "a reply has no 'text' string"
    assert unconfigured.status_code == 503
    assert "PARLEY_EMAIL_WEBHOOK_SECRET" in unconfigured.json()["detail"]
    assert await _count(db, Message) == 0 and await _count(db, Contact) == 0


# --- the fake gateway over loopback HTTP, and the lifespan -----------------------------------


@contextlib.asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/webhooks/linkedin"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def gateway_factory() -> Iterator[list[FakeLinkedInGateway]]:
    started: list[FakeLinkedInGateway] = []
    yield started
    for fake in started:
        fake.stop()


async def test_the_fake_gateways_signed_webhooks_over_loopback_http(
    db: Database,
    rt: Runtime,
    tmp_path: Path,
    application: FastAPI,
    woken: Woken,
    gateway_factory: list[FakeLinkedInGateway],
) -> None:
    identity_id, cid = await _waiting_lead(db, rt, tmp_path, "linkedin", SEAT, LEAD)
    async with db.transaction() as session:
        session.add(
            Action(
                identity_id=identity_id,
                channel="linkedin",
                type="linkedin_message",
                payload={"to": LEAD},
                not_before=datetime(2026, 12, 8, 10, tzinfo=UTC),
                idempotency_key="queued-1",
            )
        )
    async with _serving(application) as url:
        gateway = FakeLinkedInGateway(
            accounts=[SEAT], webhook_url=url, webhook_secret=LINKEDIN_SECRET
        )
        gateway.start()
        gateway_factory.append(gateway)
        deliveries = [
            gateway.accept_invitation(SEAT, LEAD),
            gateway.deliver_message(SEAT, LEAD, "Thanks for connecting", message_id="msg_loop"),
            gateway.announce_session_expired(SEAT),
        ]
        for delivery in deliveries:
            assert await asyncio.to_thread(delivery.wait, 10), delivery

    async with db.read() as session:
        contact = await queries.contacts.get_contact(
            session, (await _conversation(db, cid)).contact_id
        )
        [action] = list((await session.execute(select(Action))).scalars())
    assert contact.fields == {"linkedin_connected": True}
    assert [m.provider_message_id for m in await _inbound(db, cid)] == ["msg_loop"]
    assert action.queue == "linkedin"
    assert [c.run for c in woken.changes] == ["resume"]
    assert woken.wakeups == [WakeUp(cid, "resume", FLOW_RUN)]
    assert (await _conversation(db, cid)).status is Status.SUSPENDED  # nothing ran it here


async def test_the_lifespan_builds_the_outreach_channels_from_settings(
    database_factory: Any, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(database_factory(backend))
    settings = Settings(
        database_url=url,
        linkedin_webhook_secret=LINKEDIN_SECRET,
        email_webhook_secret=EMAIL_SECRET,
        default_campaign=ROOT / "examples/campaigns/onboarding.yaml",
    )

    async def resolved(_settings: Settings) -> str:
        return url

    monkeypatch.setattr(webhook_app, "get_settings", lambda: settings)
    monkeypatch.setattr(composition, "resolve_database_url", resolved)
    app = FastAPI()
    async with webhook_app.lifespan(app):
        assert isinstance(app.state.linkedin, LinkedInChannel)
        assert app.state.linkedin.config.webhook_secret == LINKEDIN_SECRET
        assert isinstance(app.state.email, EmailChannel)
        assert app.state.email.config.webhook_secret == EMAIL_SECRET
        body, headers = signed_request(json.loads(json.dumps(_lead_writes())), LINKEDIN_SECRET)
        app.state.linkedin.verify(body, headers)
