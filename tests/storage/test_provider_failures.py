"""What a step does when the outside world misbehaves: WhatsApp rate limits and outages,
refusals that will never succeed, an expired access token, a CRM answering 5xx."""

from __future__ import annotations

import asyncio
import json

import pytest

from devkit.fakes.recording_endpoint import RecordingEndpoint
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_status_payload
from parley.channels.whatsapp.wire import parse_webhook
from parley.conversation import executor, inbox
from parley.conversation import operator_views as views
from parley.db import Database, queries
from parley.errors import RateLimited, TransientChannelError
from parley.retry import RetryPolicy
from parley.runtime import Runtime
from parley.vocabulary import step_ref
from tests.storage.conftest import PHONE_ID, USER, start_conversation


async def _outbound(db: Database, cid: int) -> list[dict[str, object]]:
    detail = await views.show_conversation(db, cid)
    return [m for m in detail["messages"] if m["direction"] == "out"]


async def test_a_throttled_send_is_known_unsent_and_the_retry_sends_once(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    fake.fail_next(130429, 429)
    with pytest.raises(RateLimited):
        await executor.advance(runtime, cid, 0)  # run_step retries this for a bounded time
    assert [m["status"] for m in await _outbound(db, cid)] == ["pending"]
    cursor = await executor.advance(runtime, cid, 0)
    assert cursor.step == 1
    assert len(fake.texts_to(USER)) == 1
    assert [m["status"] for m in await _outbound(db, cid)] == ["sent"]


@pytest.mark.parametrize(
    ("code", "http_status", "reason"),
    [
        (131047, 400, "OutsideCustomerWindow"),
        (190, 401, "IdentityExpired"),
        (100, 400, "PermanentChannelError"),
    ],
)
async def test_a_refusal_that_cannot_succeed_fails_the_conversation_and_apologises(
    db: Database,
    runtime: Runtime,
    campaign_name: str,
    fake: FakeWhatsAppAPI,
    code: int,
    http_status: int,
    reason: str,
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    fake.fail_next(code, http_status)
    cursor = await executor.advance(runtime, cid, 0)
    assert cursor.status == "failed" and not cursor.active
    detail = await views.show_conversation(db, cid)
    assert reason in detail["last_error"]
    assert [m["status"] for m in await _outbound(db, cid)] == ["failed", "sent"]
    again = await executor.advance(runtime, cid, 0)
    assert again.status == "failed"
    # The greeting never went out; the campaign's error_text did, once.
    assert fake.texts_to(USER) == [
        "Sorry, something went wrong on our side. We'll get back to you shortly."
    ]


async def test_a_timed_out_send_stays_uncertain_and_is_reconciled_before_resending(
    db: Database,
    runtime: Runtime,
    campaign_name: str,
    fake: FakeWhatsAppAPI,
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    fake.hold_next(3)  # longer than the client's 2 s timeout; Meta did accept it
    with pytest.raises(TransientChannelError):
        await executor.advance(runtime, cid, 0)
    assert [m["status"] for m in await _outbound(db, cid)] == ["sending"]
    cursor = await executor.advance(runtime, cid, 0)  # no status callback here: resend after 1 s
    assert cursor.step == 1
    assert len(fake.texts_to(USER)) == 2  # the honest cost of an uncertain send with no callback


async def test_the_crm_answering_5xx_is_retried_with_the_same_idempotency_key(
    db: Database,
    runtime: Runtime,
    campaign_name: str,
    crm: RecordingEndpoint,
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    await _at_register(db, cid)
    crm.fail_next(503)
    with pytest.raises(TransientChannelError):
        await executor.advance(runtime, cid, 0)
    cursor = await executor.advance(runtime, cid, 0)
    assert cursor.step == 1
    keys = [r["headers"].get("Idempotency-Key") for r in crm.requests]
    assert [r["answered"] for r in crm.requests] == [503, 201]
    assert keys[0] == keys[1] and keys[0]
    detail = await views.show_conversation(db, cid)
    assert detail["variables"]["crm"]["status"] == 201
    assert detail["current_node"] == "confirm"


async def _at_register(db: Database, cid: int) -> None:
    async with db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, cid)
        row.current_node = "register"
        row.variables = {"name": "A", "email": "a@b.co", "plan": "Pro"}


async def test_the_crm_idempotency_key_is_the_step_reference_and_no_phone_travels_in_headers(
    db: Database, runtime: Runtime, campaign_name: str, crm: RecordingEndpoint
) -> None:
    """A node visited twice, or the contact's next conversation, must not be dropped by an
    idempotent CRM: the key names the step, not the contact and the node."""
    cid = await start_conversation(db, runtime, campaign_name)
    await _at_register(db, cid)
    await executor.advance(runtime, cid, 0)
    headers = crm.requests[0]["headers"]
    assert headers["Idempotency-Key"] == step_ref(cid, 0)
    assert not any(USER in value for value in headers.values())


async def test_a_crm_refusing_for_good_sends_the_apology_and_fails_with_the_reason(
    db: Database,
    runtime: Runtime,
    campaign_name: str,
    crm: RecordingEndpoint,
    fake: FakeWhatsAppAPI,
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    await _at_register(db, cid)
    crm.fail_next(400)
    cursor = await executor.advance(runtime, cid, 0)
    assert cursor.status == "failed"
    detail = await views.show_conversation(db, cid)
    assert "answered 400" in detail["last_error"]
    assert fake.texts_to(USER) == [
        "Sorry, something went wrong on our side. We'll get back to you shortly."
    ]


async def test_giving_up_twice_apologises_once(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    """The flow's give-up task may be retried after a crash: the apology intent is written
    with the state change, so a replay delivers it only if it had not gone out."""
    cid = await start_conversation(db, runtime, campaign_name)
    await executor.give_up(runtime, cid, 0, "CRM kept failing")
    await executor.give_up(runtime, cid, 0, "CRM kept failing")
    assert len(fake.texts_to(USER)) == 1
    assert (await views.show_conversation(db, cid))["status"] == "failed"


async def test_a_5xx_on_send_is_uncertain_and_reconciled_from_the_status_callback(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    """A 5xx may come from a proxy after Meta accepted the message: the retry waits for Meta's
    status callback (it carries our reference) instead of sending it a second time."""
    cid = await start_conversation(db, runtime, campaign_name)
    fake.fail_next(131000, 500)
    with pytest.raises(TransientChannelError):
        await executor.advance(runtime, cid, 0)
    assert [m["status"] for m in await _outbound(db, cid)] == ["sending"]
    callback = build_status_payload(
        phone_number_id=PHONE_ID,
        message_id="wamid.accepted-behind-the-500",
        status="sent",
        recipient=USER,
        client_ref=step_ref(cid, 0),
    )
    await inbox.store_batch(db, parse_webhook(json.dumps(callback).encode()), campaign_name)
    cursor = await executor.advance(runtime, cid, 0)
    assert cursor.step == 1
    assert fake.texts_to(USER) == []  # never sent twice: Meta had it


async def test_a_5xx_with_no_callback_is_sent_again_after_the_reconcile_window(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    fake.fail_next(131000, 500)
    with pytest.raises(TransientChannelError):
        await executor.advance(runtime, cid, 0)
    cursor = await executor.advance(runtime, cid, 0)  # no callback within 1 s: resend once
    assert cursor.step == 1
    assert len(fake.texts_to(USER)) == 1


async def test_a_429_storm_honours_retry_after_and_then_sends_once(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    fake.fail_next(130429, 429, count=3, retry_after=0.3)
    started = asyncio.get_running_loop().time()
    cursor = await executor.run_step(runtime, cid, 0)
    waited = asyncio.get_running_loop().time() - started
    assert cursor.step == 1 and len(fake.texts_to(USER)) == 1
    assert waited >= 0.9  # three retry-afters of 0.3 s, not the backoff's own schedule


async def test_an_outage_longer_than_the_retry_budget_fails_the_conversation_with_the_reason(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    runtime.send_retry = RetryPolicy(budget_seconds=1.0, first_delay=0.2, max_delay=0.2)
    fake.fail_next(130429, 429, count=50)
    cursor = await executor.run_step(runtime, cid, 0)
    detail = await views.show_conversation(db, cid)
    assert cursor.status == "failed"
    assert "RateLimited for 1 s" in detail["last_error"]
