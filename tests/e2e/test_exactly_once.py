"""Exactly once, with a real dispatcher process killed mid-call: one test per channel. The
dispatcher (``tests.e2e.dispatcher_process``: the dispatcher run's recovery and outreach ticks,
Prefect's per-identity slots included) performs the action; the loopback provider takes it and
holds its answer; the test SIGKILLs the process before the outcome is recorded, starts a new
dispatcher, and counts what the provider received: exactly one each.

* WhatsApp cannot deduplicate: the new dispatcher's recovery makes the action ``uncertain``
  instead of sending it again, and Meta's status callback (through the real webhook), carrying
  our ``biz_opaque_callback_data``, settles it ``sent``.
* SMTP cannot either, nor be asked: ``uncertain``, never resent; the delivery event that names
  our Message-ID (the inbound-email webhook) settles it ``sent``.
* The LinkedIn gateway deduplicates by ``Idempotency-Key``: the action is performed again with
  the same key once the killed dispatcher's slot has lapsed, and the gateway answers with the
  first result instead of acting twice."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from devkit.fakes.email_payloads import build_delivery_event, signed_request
from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.fakes.smtp_server import LoopbackSMTPServer
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.stack.processes import Stack, free_port
from parley.campaign.registry import CampaignCache, install_campaign
from parley.clock import DrivenClock
from parley.conversation import executor, lifecycle
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.db.models import Action, Conversation, Identity
from parley.runtime import Runtime
from tests.dispatching.test_outreach import _until_waiting
from tests.e2e.conftest import API_KEY, APP_SECRET

pytestmark = pytest.mark.e2e

PHONE_ID = "100000000000888"
EMAIL_SECRET = "test-email-webhook-secret"
TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
HOLD = 300.0  # the provider's answer comes long after the kill
CAMPAIGN = """
name: once-{channel}
channel: {channel}
start: nudge
nodes:
  - {{id: nudge, type: send, action: {action}, {extra}text: "Hello"}}
  - {{id: done, type: end}}
edges:
  - {{from: nudge, to: done}}
"""
KINDS = {
    "whatsapp": ("whatsapp_template", "template: winback_1, ", PHONE_ID, "34600777888"),
    "email": ("email", "subject: Hi, ", "sales@example.com", "lead@example.com"),
    "linkedin": ("linkedin_message", "", "seat-once", "in/lead-once"),
}


@dataclass
class Rig:
    """The real parts around the dispatcher: the database, the webhook (for the providers'
    callbacks) and the environment every dispatcher process starts with."""

    db_url: str
    stack: Stack
    env: dict[str, str]
    webhook_port: int
    clock: DrivenClock
    whatsapp: FakeWhatsAppAPI

    def start_dispatcher(self, name: str) -> None:
        self.stack.spawn(name, [sys.executable, "-m", "tests.e2e.dispatcher_process"])

    def kill(self, name: str) -> None:
        self.stack.kill(name)  # SIGKILL: no outcome written, no slot given back

    def log(self, name: str) -> str:
        return (self.stack.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def rig(
    prefect_server: str, database_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    name = f"once-{uuid.uuid4().hex[:6]}"
    directory = tmp_path_factory.mktemp(name)
    db_url = database_factory("postgresql")
    webhook_port = free_port()
    clock = DrivenClock(directory / "clock-offset")
    clock.set_offset(TUESDAY_10 - datetime.now(UTC))  # within the identities' working hours
    whatsapp = FakeWhatsAppAPI(
        access_token="test-token",
        phone_number_id=PHONE_ID,
        webhook_url=f"http://127.0.0.1:{webhook_port}/webhooks/whatsapp",
        app_secret=APP_SECRET,
    )
    whatsapp.start()
    env = {
        "PARLEY_DATABASE_URL": db_url,
        "PARLEY_DATA_DIR": str(directory),
        "PARLEY_CLOCK_FILE": str(clock.path),
        "PARLEY_WHATSAPP_API_URL": whatsapp.api_url,
        "PARLEY_WHATSAPP_ACCESS_TOKEN": "test-token",
        "PARLEY_WHATSAPP_PHONE_NUMBER_ID": PHONE_ID,
        "PARLEY_WHATSAPP_APP_SECRET": APP_SECRET,
        "PARLEY_WHATSAPP_VERIFY_TOKEN": "test-verify-token",
        "PARLEY_EMAIL_WEBHOOK_SECRET": EMAIL_SECRET,
        "PARLEY_API_KEYS": API_KEY,
        "PARLEY_IDENTITY_LIMIT_PREFIX": f"identity-{name}-",
        "PARLEY_DISPATCHER_TICK_SECONDS": "0.2",
        "PARLEY_LEASE_SECONDS": "0.5",  # recovery threshold: 2 s
        "PARLEY_WHATSAPP_TIMEOUT_SECONDS": str(HOLD * 2),  # the kill, not a timeout, ends it
    }
    stack = Stack(directory, env=env)
    stack.use_prefect_api(prefect_server, Path(os.environ["PREFECT_HOME"]))
    stack.start_webhook("127.0.0.1", webhook_port)
    yield Rig(db_url, stack, env, webhook_port, clock, whatsapp)
    stack.stop()
    whatsapp.stop()


@pytest.fixture
async def db(rig: Rig) -> AsyncIterator[Database]:
    database = Database(rig.db_url)
    yield database
    await database.dispose()


@pytest.fixture
def smtp() -> Iterator[LoopbackSMTPServer]:
    server = LoopbackSMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gateway() -> Iterator[FakeLinkedInGateway]:
    fake = FakeLinkedInGateway(accounts=(KINDS["linkedin"][2],), require_connection=False)
    fake.start()
    yield fake
    fake.stop()


async def _lead(rig: Rig, db: Database, channel: str, settings: dict[str, Any]) -> int:
    """A conversation waiting at its send node, its action queued for a new identity."""
    action, extra, sender, lead = KINDS[channel]
    path = rig.stack.data_dir / f"{channel}.yaml"
    path.write_text(CAMPAIGN.format(channel=channel, action=action, extra=extra))
    async with db.transaction() as session:
        campaign = (await install_campaign(session, path)).name
        identity = Identity(channel=channel, address=sender, timezone="UTC", settings=settings)
        session.add(identity)
        await session.flush()
        identity_id = identity.id
    change = await lifecycle.start(db, campaign, identity_id, channel=channel, address=lead)
    rt = Runtime(
        db=db, channels={}, post_json=post_json, campaigns=CampaignCache(), clock=rig.clock
    )
    await executor.begin_run(rt, change.conversation_id, None)
    await _until_waiting(rt, change.conversation_id)
    return change.conversation_id


async def _action(db: Database, conversation_id: int) -> Action:
    async with db.read() as session:
        rows = await session.execute(
            select(Action).where(Action.conversation_id == conversation_id)
        )
        [action] = list(rows.scalars())
        return action


async def _outcome_given(db: Database, conversation_id: int) -> Any:
    async with db.read() as session:
        row = await session.get(Conversation, conversation_id)
        assert row is not None
        return row.task_result


async def _until(
    rig: Rig, what: str, ready: Callable[[], Awaitable[bool]], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await ready():
            return
        await asyncio.sleep(0.2)
    logs = "\n".join(f"--- {n}\n{rig.log(n)}" for n in ("first", "second") if _has_log(rig, n))
    raise AssertionError(f"not within {timeout} s: {what}\n{logs}")


def _has_log(rig: Rig, name: str) -> bool:
    return (rig.stack.log_dir / f"{name}.log").exists()


def _received(count: Callable[[], int], n: int) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        return count() >= n

    return ready


def _status_is(db: Database, conversation_id: int, *wanted: str) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        action = await _action(db, conversation_id)
        return action.status in wanted or f"{action.status}/{action.outcome}" in wanted

    return ready


async def _kill_after_the_provider_has_it(
    rig: Rig, db: Database, conversation_id: int, received: Callable[[], int]
) -> Action:
    rig.start_dispatcher("first")
    await _until(rig, "the provider received the call", _received(received, 1))
    rig.kill("first")
    action = await _action(db, conversation_id)
    assert action.status == "running"  # the outcome was never recorded
    return action


async def test_dispatcher_killed_after_whatsapp_template_call_sends_it_once(
    rig: Rig, db: Database
) -> None:
    conversation_id = await _lead(rig, db, "whatsapp", {})
    rig.whatsapp.reset()
    rig.whatsapp.pause_callbacks()  # Meta's callbacks come after the crash
    rig.whatsapp.hold_next(HOLD)
    try:
        await _kill_after_the_provider_has_it(
            rig, db, conversation_id, lambda: len(rig.whatsapp.received)
        )
        rig.start_dispatcher("second")  # its recovery finds the abandoned claim
        await _until(rig, "the action is uncertain", _status_is(db, conversation_id, "uncertain"))
        assert len(rig.whatsapp.received) == 1  # not sent again

        rig.whatsapp.resume_callbacks()  # "sent", carrying biz_opaque_callback_data
        await _until(rig, "the callback settled it", _status_is(db, conversation_id, "done/sent"))
    finally:
        rig.whatsapp.resume_callbacks()
        rig.stack.terminate("second", grace=5)

    [record] = rig.whatsapp.received
    action = await _action(db, conversation_id)
    assert record["biz_opaque_callback_data"] == action.idempotency_key
    assert action.provider_id == record["_wamid"]
    assert (await _outcome_given(db, conversation_id))["outcome"] == "sent"


async def test_dispatcher_killed_after_the_smtp_data_sends_the_email_once(
    rig: Rig, db: Database, smtp: LoopbackSMTPServer
) -> None:
    conversation_id = await _lead(rig, db, "email", smtp.smtp_settings(timeout=HOLD * 2))
    smtp.delay_next(HOLD)  # the message is in; its 250 never reaches the dispatcher
    try:
        await _kill_after_the_provider_has_it(rig, db, conversation_id, lambda: len(smtp.messages))
        rig.start_dispatcher("second")
        await _until(rig, "the action is uncertain", _status_is(db, conversation_id, "uncertain"))
        assert len(smtp.messages) == 1  # not sent again: SMTP cannot be asked, nor deduplicate
        action = await _action(db, conversation_id)
        assert action.reason is not None and action.reason.startswith("uncertain: ")
        assert await _outcome_given(db, conversation_id) is None  # waits, not failed yet

        # The mail provider's delivery event names our Message-ID: that settles it.
        [message] = smtp.messages
        event = build_delivery_event(
            "delivered",
            message_id=str(message.message["Message-ID"]),
            sender=KINDS["email"][2],
            recipient=KINDS["email"][3],
        )
        body, headers = signed_request(event, EMAIL_SECRET)
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"http://127.0.0.1:{rig.webhook_port}/webhooks/email"
            assert (await client.post(url, content=body, headers=headers)).status_code == 200
        await _until(rig, "the event settled it", _status_is(db, conversation_id, "done/sent"))
    finally:
        rig.stack.terminate("second", grace=5)

    assert len(smtp.messages) == 1
    assert (await _outcome_given(db, conversation_id))["outcome"] == "sent"


async def test_dispatcher_killed_after_the_linkedin_call_retries_it_with_the_same_key_once(
    rig: Rig, db: Database, gateway: FakeLinkedInGateway
) -> None:
    seat = gateway.sender(KINDS["linkedin"][2])  # the gateway's timeout (10 s) outlasts the kill
    conversation_id = await _lead(rig, db, "linkedin", dict(seat.settings))
    gateway.hold_next(HOLD)
    try:
        first = await _kill_after_the_provider_has_it(
            rig, db, conversation_id, lambda: len(gateway.performed)
        )
        rig.start_dispatcher("second")  # requeued with its key; retried once the killed
        # dispatcher's identity slot has lapsed (Prefect's 60 s lease)
        await _until(rig, "the retry settled it", _status_is(db, conversation_id, "done/sent"), 180)
    finally:
        rig.stack.terminate("second", grace=5)

    [performed] = gateway.performed  # the retry was answered with the first result
    action = await _action(db, conversation_id)
    assert performed.idempotency_key == first.idempotency_key == action.idempotency_key
    assert action.provider_id == performed.id
    assert action.attempts == 2
    assert (await _outcome_given(db, conversation_id))["outcome"] == "sent"
