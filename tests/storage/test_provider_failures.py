"""What a step does when the outside world misbehaves: WhatsApp rate limits and outages,
refusals that will never succeed, an expired access token, a CRM answering 5xx."""

from __future__ import annotations

import pytest

from parley import executor
from parley import operator_views as views
from parley.db import Database
from parley.errors import RateLimited, TransientChannelError
from parley.runtime import Runtime
from parley.testing.recording_endpoint import RecordingEndpoint
from parley.testing.whatsapp_fake import FakeWhatsAppAPI
from tests.storage.conftest import USER, start_conversation


async def _outbound(db: Database, cid: int) -> list[dict[str, object]]:
    detail = await views.show_conversation(db, cid)
    return [m for m in detail["messages"] if m["direction"] == "out"]


@pytest.mark.parametrize(
    ("code", "http_status", "error"),
    [(130429, 429, RateLimited), (131000, 500, TransientChannelError)],
)
async def test_a_throttled_or_failing_send_is_known_unsent_and_the_retry_sends_once(
    db: Database,
    runtime: Runtime,
    campaign_name: str,
    fake: FakeWhatsAppAPI,
    code: int,
    http_status: int,
    error: type[Exception],
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    fake.fail_next(code, http_status)
    with pytest.raises(error):
        await executor.advance(runtime, cid, 0)  # the Prefect task retries this with backoff
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
async def test_a_refusal_that_cannot_succeed_fails_the_conversation_with_the_reason(
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
    assert [m["status"] for m in await _outbound(db, cid)] == ["failed"]
    again = await executor.advance(runtime, cid, 0)
    assert again.status == "failed"
    assert fake.texts_to(USER) == []


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
    async with db.transaction() as session:
        from parley.db import queries

        row = await queries.lock_conversation(session, cid)
        row.current_node, row.variables = (
            "register",
            {"name": "A", "email": "a@b.co", "plan": "Pro"},
        )
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
