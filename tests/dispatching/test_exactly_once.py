"""Exactly once on channels that cannot deduplicate, on SQLite and PostgreSQL: a WhatsApp
template or an email whose call may have happened is never sent again on a guess; it waits
for the provider's status callback (which carries our key back) and is settled by it, or ends
failed with an ``uncertain:`` reason for an operator. Every outcome is written under the
claim stamp of the dispatcher that made the call, so recovery and a slow call never send twice
and an old claim's outcome never overwrites a new one. (The crash tests, with real dispatcher
processes killed mid-call, are in tests/e2e/test_exactly_once.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.fakes.smtp_server import LoopbackSMTPServer
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_status_payload
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.email.channel import EmailChannel
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.channels.whatsapp.wire import parse_webhook
from parley.clock import DrivenClock
from parley.conversation import executor, inbox, lifecycle
from parley.conversation.http_action import post_json
from parley.db import Database, queries
from parley.db.models import Conversation, Identity
from parley.outreach import dispatch, identities
from parley.runtime import Runtime
from prefect_adapter.outreach_tick import recover_abandoned_actions
from tests.dispatching.test_outreach import _actions, _seeded, _until_waiting

PHONE_ID = "100000000000654"
TUESDAY_10 = datetime(2026, 12, 8, 10, 0, tzinfo=UTC)
WHATSAPP_TIMEOUT = 1.0
RECONCILE = 600.0
CAMPAIGN = """
name: once-{channel}
channel: {channel}
start: nudge
nodes:
  - {{id: nudge, type: send, action: {action}, {extra}text: "Hello"}}
  - {{id: done, type: end}}
  - {{id: oops, type: end}}
edges:
  - {{from: nudge, to: oops, when: error}}
  - {{from: nudge, to: done}}
"""
ADDRESSES = {"whatsapp": "34600111222", "email": "lead@example.com", "linkedin": "in/lead-1"}
ACTIONS = {"whatsapp": "whatsapp_template", "email": "email", "linkedin": "linkedin_message"}
EXTRA = {"whatsapp": "template: winback_1, ", "email": "subject: Hi, ", "linkedin": ""}


@pytest.fixture
def whatsapp() -> Iterator[FakeWhatsAppAPI]:
    api = FakeWhatsAppAPI(access_token="t", phone_number_id=PHONE_ID)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def smtp() -> Iterator[LoopbackSMTPServer]:
    server = LoopbackSMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gateway() -> Iterator[FakeLinkedInGateway]:
    fake = FakeLinkedInGateway(require_connection=False)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
async def rt(db: Database, whatsapp: FakeWhatsAppAPI, tmp_path: Path) -> AsyncIterator[Runtime]:
    clock = DrivenClock(tmp_path / "offset")
    clock.set_offset(TUESDAY_10 - datetime.now(UTC))
    config = WhatsAppConfig(whatsapp.api_url, "t", PHONE_ID, "s", "v", WHATSAPP_TIMEOUT)
    channel = WhatsAppChannel(config)
    runtime = Runtime(
        db=db,
        channels={"whatsapp": channel},
        post_json=post_json,
        campaigns=CampaignCache(),
        clock=clock,
        action_reconcile_seconds=RECONCILE,
        outreach={
            "whatsapp": channel,
            "email": EmailChannel(),
            "linkedin": LinkedInChannel(LinkedInConfig()),
        },
    )
    yield runtime
    for provider in runtime.outreach.values():
        await provider.aclose()


async def _lead(
    db: Database, rt: Runtime, tmp_path: Path, channel: str, settings: dict[str, object]
) -> tuple[int, int]:
    path = tmp_path / f"{channel}.yaml"
    path.write_text(CAMPAIGN.format(channel=channel, action=ACTIONS[channel], extra=EXTRA[channel]))
    address = {"whatsapp": PHONE_ID, "email": "sales@example.com", "linkedin": "seat-1"}[channel]
    async with db.transaction() as session:
        name = (await install_campaign(session, path)).name
        identity = Identity(channel=channel, address=address, timezone="UTC", settings=settings)
        session.add(identity)
        await session.flush()
        identity_id = identity.id
    change = await lifecycle.start(
        db, name, identity_id, channel=channel, address=ADDRESSES[channel]
    )
    await executor.begin_run(rt, change.conversation_id, None)
    await _until_waiting(rt, change.conversation_id)
    return identity_id, change.conversation_id


async def _task_result(db: Database, conversation_id: int) -> dict[str, object] | None:
    async with db.read() as session:
        row = await session.get(Conversation, conversation_id)
        assert row is not None
        return row.task_result


async def _meta_callback(
    db: Database,
    whatsapp: FakeWhatsAppAPI,
    status: str,
    errors: list[dict[str, object]] | None = None,
) -> None:
    """Meta's status callback for the one template the fake received, as the webhook route
    stores it: the wamid and our ``biz_opaque_callback_data`` come back."""
    [record] = whatsapp.received
    payload = build_status_payload(
        phone_number_id=PHONE_ID,
        message_id=record["_wamid"],
        status=status,
        recipient=str(record["to"]),
        client_ref=record.get("biz_opaque_callback_data"),
        errors=errors,
    )
    batch = parse_webhook(json.dumps(payload).encode())
    await inbox.store_batch(db, batch, None, settle_action=dispatch.reconcile_status)


async def _until(what: str, ready: object, timeout: float = 20) -> None:
    assert callable(ready)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not ready():
        assert loop.time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def test_a_whatsapp_template_that_timed_out_is_not_sent_again_and_its_callback_marks_it_sent(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path, "whatsapp", {})
    whatsapp.hold_next(WHATSAPP_TIMEOUT + 1)  # Meta takes it; our call times out
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "uncertain"
    [action] = await _actions(db, identity_id)
    assert action.status == "uncertain" and action.reason is not None
    assert action.reason.startswith("uncertain: ")
    assert (await identities.explain(db, identity_id))["uncertain"] == 1  # operators see it
    assert isinstance(rt.clock, DrivenClock)
    rt.clock.advance(timedelta(minutes=5))  # past any retry backoff: still nothing to send
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"
    assert await _task_result(db, cid) is None  # the conversation waits for the outcome

    await _meta_callback(db, whatsapp, "sent")

    [action] = await _actions(db, identity_id)
    assert (action.status, action.outcome) == ("done", "sent")
    assert action.provider_id == whatsapp.received[0]["_wamid"]
    result = await _task_result(db, cid)
    assert result is not None and result["outcome"] == "sent"
    assert len(whatsapp.received) == 1
    assert (await identities.explain(db, identity_id))["uncertain"] == 0


async def test_an_uncertain_whatsapp_template_without_a_callback_ends_failed_not_resent(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path, "whatsapp", {})
    whatsapp.hold_next(WHATSAPP_TIMEOUT + 1)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "uncertain"
    assert await recover_abandoned_actions(rt, timedelta(minutes=5)) == 0  # still waiting
    assert isinstance(rt.clock, DrivenClock)
    rt.clock.advance(timedelta(seconds=RECONCILE + 1))

    assert await recover_abandoned_actions(rt, timedelta(minutes=5)) == 1

    [action] = await _actions(db, identity_id)
    assert (action.status, action.outcome) == ("done", "failed")
    assert action.reason is not None and action.reason.startswith("uncertain: no status callback")
    result = await _task_result(db, cid)
    assert result is not None and result["outcome"] == "failed"  # the node's error path
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"
    assert len(whatsapp.received) == 1
    await _meta_callback(db, whatsapp, "delivered")  # too late: what was decided stays
    [late] = await _actions(db, identity_id)
    assert (late.status, late.outcome) == ("done", "failed")


async def test_a_status_callback_that_beats_the_timed_out_answer_settles_the_template_sent(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path, "whatsapp", {})
    whatsapp.hold_next(WHATSAPP_TIMEOUT + 1)
    call = asyncio.create_task(dispatch.perform_next(rt, identity_id, _seeded()))
    await _until("Meta has the template", lambda: len(whatsapp.received) == 1)
    await _meta_callback(db, whatsapp, "sent")  # while our call still waits for its answer
    [running] = await _actions(db, identity_id)
    assert running.status == "running" and running.provider_id == whatsapp.received[0]["_wamid"]

    assert await call == "uncertain"  # the call timed out ...

    [action] = await _actions(db, identity_id)  # ... but Meta already said it has it
    assert (action.status, action.outcome) == ("done", "sent")
    result = await _task_result(db, cid)
    assert result is not None and result["outcome"] == "sent"
    assert len(whatsapp.received) == 1


async def test_meta_reporting_an_uncertain_template_failed_settles_it_failed(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path, "whatsapp", {})
    whatsapp.hold_next(WHATSAPP_TIMEOUT + 1)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "uncertain"

    await _meta_callback(db, whatsapp, "failed", [{"code": 131026, "title": "Undeliverable"}])

    [action] = await _actions(db, identity_id)
    assert (action.status, action.outcome) == ("done", "failed")
    assert action.reason is not None and "131026" in action.reason
    result = await _task_result(db, cid)
    assert result is not None and result["outcome"] == "failed"
    assert len(whatsapp.received) == 1


async def test_a_whatsapp_template_refused_before_meta_took_it_is_simply_retried(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    """Only a call that may have happened is uncertain: a refused connection is retried."""
    identity_id, _ = await _lead(db, rt, tmp_path, "whatsapp", {})
    whatsapp.stop()
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "retrying"
    [action] = await _actions(db, identity_id)
    assert action.status == "queued"


async def test_a_slow_smtp_server_outliving_the_recovery_threshold_sends_one_email(
    db: Database, rt: Runtime, smtp: LoopbackSMTPServer, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path, "email", smtp.smtp_settings())
    smtp.delay_next(3.0)  # the server takes the message, then answers DATA 3 s late
    slow = asyncio.create_task(dispatch.perform_next(rt, identity_id, _seeded()))
    await _until("the server has the message", lambda: len(smtp.messages) == 1)

    # Another dispatcher's recovery finds the action claimed longer than its threshold.
    assert await recover_abandoned_actions(rt, timedelta(0)) == 1
    [action] = await _actions(db, identity_id)
    assert action.status == "uncertain"  # not queued again: SMTP cannot deduplicate
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"

    assert await slow == "sent"  # the slow call's own outcome, under its own claim
    [action] = await _actions(db, identity_id)
    assert (action.status, action.outcome) == ("done", "sent")
    result = await _task_result(db, cid)
    assert result is not None and result["outcome"] == "sent"
    assert len(smtp.messages) == 1


async def test_an_outcome_written_with_a_stale_claim_stamp_is_refused(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway, tmp_path: Path
) -> None:
    """A LinkedIn call slower than the recovery threshold: recovery queues the action again
    (the gateway deduplicates), a second dispatcher claims it with a new stamp, and the first
    claim's late outcome must not overwrite the second's."""
    settings = dict(gateway.sender().settings)
    identity_id, _ = await _lead(db, rt, tmp_path, "linkedin", settings)
    async with db.transaction() as session:
        first = await queries.actions.claim_next_action(
            session, identity_id, rt.clock.now(), "first"
        )
    assert first is not None
    assert await recover_abandoned_actions(rt, timedelta(0)) == 1  # requeued, same key
    async with db.transaction() as session:
        second = await queries.actions.claim_next_action(
            session, identity_id, rt.clock.now(), "second"
        )
    assert second is not None and second.id == first.id

    async with db.transaction() as session:
        refused = await queries.actions.finish_action(
            session,
            first.id,
            outcome="failed",
            reason="the first claim's late answer",
            provider_id=None,
            performed_at=None,
            claim="first",
        )
    assert refused is False
    [action] = await _actions(db, identity_id)
    assert (action.status, action.claim, action.outcome) == ("running", "second", None)

    async with db.transaction() as session:
        accepted = await queries.actions.finish_action(
            session,
            second.id,
            outcome="sent",
            reason=None,
            provider_id="li-1",
            performed_at=rt.clock.now(),
            claim="second",
        )
    assert accepted is True
    [action] = await _actions(db, identity_id)
    assert (action.status, action.outcome, action.provider_id) == ("done", "sent", "li-1")
