"""Storage behaviour on both backends (SQLite and PostgreSQL): the inbox, signal-with-start,
the step executor's idempotency and the sleep/wake handshake, with the loopback Graph API."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_status_payload, status_error
from parley.channels.whatsapp.wire import parse_webhook
from parley.conversation import executor, handshake, inbox
from parley.conversation import operator_views as views
from parley.db import Database, queries
from parley.inbox_signal import (
    DatagramSignal,
    PostgresSignal,
    announce_stored,
    datagram_directory,
)
from parley.runtime import Runtime
from parley.vocabulary import step_ref
from tests.storage.conftest import PHONE_ID, USER, make_batch, start_conversation


async def test_first_message_creates_contact_and_conversation_and_asks_to_start(
    db: Database, campaign_name: str
) -> None:
    result = await inbox.store_batch(db, make_batch("hi"), campaign_name)
    assert (result.stored, result.duplicates) == (1, 0)
    assert [w.action for w in result.wakeups] == ["start"]
    rows = await views.list_conversations(db)
    assert [(r["contact"], r["status"], r["channel"]) for r in rows] == [
        (USER, "pending", "whatsapp")
    ]


async def test_a_redelivered_message_is_stored_once(db: Database, campaign_name: str) -> None:
    await inbox.store_batch(db, make_batch("hi", "wamid.same"), campaign_name)
    again = await inbox.store_batch(db, make_batch("hi", "wamid.same"), campaign_name)
    assert (again.stored, again.duplicates, again.wakeups) == (0, 1, [])
    detail = await views.show_conversation(db, (await views.list_conversations(db))[0]["id"])
    assert [m["text"] for m in detail["messages"]] == ["hi"]


@pytest.mark.needs_postgresql  # six sessions race to open the contact's conversation
async def test_one_active_conversation_per_contact_even_under_concurrent_webhooks(
    db: Database, campaign_name: str
) -> None:
    batches = [make_batch(f"m{i}") for i in range(6)]
    await asyncio.gather(*(inbox.store_batch(db, b, campaign_name) for b in batches))
    rows = await views.list_conversations(db)
    assert len(rows) == 1
    detail = await views.show_conversation(db, rows[0]["id"])
    assert sorted(m["text"] for m in detail["messages"]) == [f"m{i}" for i in range(6)]


async def test_replaying_a_committed_step_sends_nothing_again(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    first = await executor.advance(runtime, cid, 0)
    replay = await executor.advance(runtime, cid, 0)
    assert first == replay and first.step == 1 and first.awaiting_reply
    assert len(fake.texts_to(USER)) == 1


async def test_a_send_that_crashed_after_the_provider_call_is_reconciled_not_resent(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    ref = step_ref(cid, 0)
    async with db.transaction() as session:
        intent = await queries.messages.ensure_outbound_intent(
            session, conversation_id=cid, step=0, client_ref=ref, text="x", payload={"type": "text"}
        )
        intent.status = "sending"  # the process died right after the provider call
    status = build_status_payload(
        phone_number_id=PHONE_ID,
        message_id="wamid.before-crash",
        status="delivered",
        recipient=USER,
        client_ref=ref,
    )
    await inbox.store_batch(db, parse_webhook(json.dumps(status).encode()), campaign_name)
    cursor = await executor.advance(runtime, cid, 0)
    assert cursor.step == 1
    assert fake.texts_to(USER) == []
    detail = await views.show_conversation(db, cid)
    out = [m for m in detail["messages"] if m["direction"] == "out"]
    assert [(m["provider_message_id"], m["status"]) for m in out] == [
        ("wamid.before-crash", "delivered")
    ]


async def test_an_uncertain_send_with_no_callback_is_sent_again_after_the_window(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    async with db.transaction() as session:
        intent = await queries.messages.ensure_outbound_intent(
            session,
            conversation_id=cid,
            step=0,
            client_ref=step_ref(cid, 0),
            text="x",
            payload={"type": "text"},
        )
        intent.status = "sending"
    cursor = await executor.advance(runtime, cid, 0)
    assert cursor.step == 1
    assert len(fake.texts_to(USER)) == 1


async def test_a_late_sent_status_never_overwrites_read(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    await executor.advance(runtime, cid, 0)
    wamid = fake.received[-1]["_wamid"]
    for status in ("read", "sent", "delivered"):
        payload = build_status_payload(
            phone_number_id=PHONE_ID, message_id=wamid, status=status, recipient=USER
        )
        await inbox.store_batch(db, parse_webhook(json.dumps(payload).encode()), campaign_name)
    out = [
        m for m in (await views.show_conversation(db, cid))["messages"] if m["direction"] == "out"
    ]
    assert out[0]["status"] == "read"


async def test_suspend_is_refused_when_a_message_is_already_waiting(
    db: Database, runtime: Runtime, campaign_name: str
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    cursor = await executor.advance(runtime, cid, 0)  # greets, then waits for the name
    assert cursor.awaiting_reply
    await inbox.store_batch(db, make_batch("Ana"), campaign_name)
    decision = await handshake.prepare_suspend(runtime, cid, cursor.step)
    assert decision.suspend is False


async def test_suspend_marks_the_row_and_a_later_message_asks_for_a_resume(
    db: Database, runtime: Runtime, campaign_name: str
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    cursor = await executor.advance(runtime, cid, 0)
    first = await handshake.prepare_suspend(runtime, cid, cursor.step)
    assert first.suspend and first.key == f"wait-{cursor.step}-1"
    result = await inbox.store_batch(db, make_batch("Ana"), campaign_name)
    assert [(w.action, w.conversation_id) for w in result.wakeups] == [("resume", cid)]


async def test_a_hot_wait_sees_a_message_stored_meanwhile(
    db: Database, runtime: Runtime, campaign_name: str
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    cursor = await executor.advance(runtime, cid, 0)

    async def reply_soon() -> None:
        await asyncio.sleep(0.3)
        await inbox.store_batch(db, make_batch("Ana"), campaign_name)

    replier = asyncio.create_task(reply_soon())
    assert await handshake.wait_hot(runtime, cid, cursor.step, seconds=20) is True
    await replier


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_storing_a_message_notifies_the_process_waiting_for_it(
    db: Database, campaign_name: str
) -> None:
    """The wake-up is the NOTIFY sent in the insert's transaction, not a poll: the signal
    reports whether it was told (True) or merely timed out (False)."""
    await inbox.store_batch(db, make_batch("hi"), campaign_name)
    cid = int((await views.list_conversations(db))[0]["id"])
    signal = PostgresSignal(db.url, fallback_poll_seconds=30)
    try:
        assert await signal.wait(cid, timeout=0.2) is False  # listening, nothing stored yet
        waiting = asyncio.create_task(signal.wait(cid, timeout=30))
        await asyncio.sleep(0.2)
        await inbox.store_batch(db, make_batch("Ana"), campaign_name)
        assert await waiting is True
    finally:
        await signal.close()


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_message_stored_between_two_looks_is_not_slept_through(
    db: Database, campaign_name: str
) -> None:
    """A hot run reads the inbox between waits; a NOTIFY arriving while it reads is kept for
    its next wait, which returns at once instead of after the trusted interval (30 s here)."""
    await inbox.store_batch(db, make_batch("hi"), campaign_name)
    cid = int((await views.list_conversations(db))[0]["id"])
    signal = PostgresSignal(db.url, fallback_poll_seconds=30, trusted_seconds=30)
    try:
        async with signal.subscribe(cid) as subscription:
            assert await subscription.wait(0.2) is False
            await inbox.store_batch(db, make_batch("Ana"), campaign_name)  # nobody waiting now
            assert await asyncio.wait_for(subscription.wait(30), timeout=10) is True
            assert await subscription.wait(0.2) is False  # told once, not for ever
    finally:
        await signal.close()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_on_sqlite_the_webhooks_datagram_wakes_the_waiting_worker_before_its_poll(
    db: Database, campaign_name: str
) -> None:
    """SQLite has no NOTIFY; webhook and worker share one machine and the database file, so
    the webhook sends each worker's socket (found from the file) the conversation id after
    its commit. With a 30 s poll, only the datagram can end the wait in time."""
    await inbox.store_batch(db, make_batch("hi"), campaign_name)
    cid = int((await views.list_conversations(db))[0]["id"])
    directory = datagram_directory(db.url)
    assert directory is not None
    signal = DatagramSignal(directory, poll_seconds=30)
    try:
        async with signal.subscribe(cid) as subscription:
            assert await subscription.wait(0.2) is False  # bound, nothing stored yet
            [socket_file] = list(directory.glob("*.sock"))
            waiting = asyncio.create_task(subscription.wait(30))
            batch = make_batch("Ana")
            result = await inbox.store_batch(db, batch, campaign_name)
            assert result.received == [cid]
            assert announce_stored(directory, result.received) == 1
            assert await asyncio.wait_for(waiting, timeout=5) is True
            duplicate = await inbox.store_batch(db, batch, campaign_name)
            assert duplicate.received == []  # a re-delivery wakes nobody
    finally:
        await signal.close()
    assert not socket_file.exists()  # a worker that stops takes its socket away


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_datagram_for_a_worker_that_died_removes_its_socket_and_fails_nothing(
    db: Database,
) -> None:
    directory = datagram_directory(db.url)
    assert directory is not None
    directory.mkdir(mode=0o700, exist_ok=True)
    dead = directory / "12345-dead00.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(dead))
    listener.close()  # killed: the file stays, nobody reads it
    assert announce_stored(directory, [7]) == 0
    assert not dead.exists()
    assert announce_stored(None, [7]) == 0  # PostgreSQL: NOTIFY does this


async def test_a_hot_wait_with_no_message_gives_up_and_reports_it(
    db: Database, runtime: Runtime, campaign_name: str
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    cursor = await executor.advance(runtime, cid, 0)
    assert await handshake.wait_hot(runtime, cid, cursor.step, seconds=0.3) is False
    assert (await views.show_conversation(db, cid))["status"] == "hot"


async def test_a_failed_status_marks_the_outbound_message_failed_with_meta_s_error(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    await executor.advance(runtime, cid, 0)
    wamid = fake.received[-1]["_wamid"]
    payload = build_status_payload(
        phone_number_id=PHONE_ID,
        message_id=wamid,
        status="failed",
        recipient=USER,
        errors=[status_error(131026, "Message undeliverable", "receiver incapable")],
    )
    result = await inbox.store_batch(db, parse_webhook(json.dumps(payload).encode()), campaign_name)
    assert result.statuses == 1
    out = [
        m for m in (await views.show_conversation(db, cid))["messages"] if m["direction"] == "out"
    ]
    assert (out[0]["status"], out[0]["error"]) == ("failed", "131026: Message undeliverable")


async def test_other_fields_unknown_types_and_unmatched_statuses_are_recorded_not_acted_on(
    db: Database, campaign_name: str
) -> None:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}},
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550000000",
                                "phone_number_id": PHONE_ID,
                            },
                            "messages": [
                                {
                                    "from": USER,
                                    "id": "wamid.unsupported",
                                    "timestamp": "1700000000",
                                    "type": "unsupported",
                                    "errors": [{"code": 131051, "title": "Unsupported type"}],
                                }
                            ],
                            "statuses": [
                                {
                                    "id": "wamid.not-ours",
                                    "status": "delivered",
                                    "timestamp": "1700000000",
                                    "recipient_id": USER,
                                }
                            ],
                        },
                    },
                ],
            }
        ],
    }
    result = await inbox.store_batch(db, parse_webhook(json.dumps(body).encode()), campaign_name)
    assert (result.stored, result.statuses, result.ignored, result.wakeups) == (0, 0, 2, [])
    assert await views.list_conversations(db) == []
    async with db.read() as session:
        assert (
            await queries.webhook_events.count_webhook_events(session, "unsupported_message") == 1
        )
        assert await queries.webhook_events.count_webhook_events(session, "unmatched_status") == 1
        assert await queries.webhook_events.count_webhook_events(session) == 3
