"""Messages that must neither ghost nor vanish, and sends that must never happen twice — on
SQLite and PostgreSQL, with the loopback Graph API."""

from __future__ import annotations

import asyncio
import json

import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_status_payload
from parley.channels.whatsapp.wire import parse_webhook
from parley.conversation import executor, handshake, inbox
from parley.conversation import operator_views as views
from parley.db import Database, queries
from parley.runtime import Runtime
from parley.vocabulary import TRIGGER_STEP, Status, step_ref
from tests.storage.conftest import PHONE_ID, USER, make_batch, start_conversation


async def _conversations(db: Database) -> list[dict[str, object]]:
    return await views.list_conversations(db)


async def _end(db: Database, conversation_id: int) -> None:
    async with db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        row.status = Status.COMPLETED


async def test_a_duplicate_delivered_after_its_conversation_ended_opens_nothing_and_wakes_nobody(
    db: Database, campaign_name: str
) -> None:
    """Meta redelivers for days: the redelivery must not open a pending conversation that the
    dispatcher would then greet out of the blue."""
    first = await inbox.store_batch(db, make_batch("hi", "wamid.once"), campaign_name)
    cid = first.wakeups[0].conversation_id
    await _end(db, cid)
    again = await inbox.store_batch(db, make_batch("hi", "wamid.once"), campaign_name)
    assert (again.stored, again.duplicates, again.wakeups) == (0, 1, [])
    assert [c["id"] for c in await _conversations(db)] == [cid]


async def test_a_message_stored_during_the_last_steps_is_handed_to_the_next_conversation(
    db: Database, runtime: Runtime, campaign_name: str
) -> None:
    """The contact taps "Pro" and types "thanks" at once: the conversation ends with "thanks"
    unread; it starts the contact's next conversation, as if it had arrived a moment later."""
    cid = await start_conversation(db, runtime, campaign_name)
    async with db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, cid)
        row.current_node = "done"  # the end node: the next step completes the conversation
    await inbox.store_batch(db, make_batch("thanks"), campaign_name)
    await inbox.store_batch(db, make_batch("and one more thing"), campaign_name)
    cursor = await executor.advance(runtime, cid, 0)
    assert cursor.status is Status.COMPLETED and cursor.successor is not None
    successor = await views.show_conversation(db, cursor.successor)
    assert successor["status"] == "pending"
    assert [m["text"] for m in successor["messages"]] == ["thanks", "and one more thing"]
    async with db.read() as session:
        moved = await queries.messages.transcript(session, cursor.successor)
    assert [m.consumed_step for m in moved] == [TRIGGER_STEP, None]


@pytest.mark.needs_postgresql  # two sessions race for one claim
async def test_two_executions_of_one_send_never_both_send(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    """A run rescheduled under a live one: both read the intent as pending, but the claim is
    one conditional UPDATE, so exactly one calls the provider."""
    cid = await start_conversation(db, runtime, campaign_name)
    fake.hold_next(0.5)  # the winner's call is in flight while the loser arrives
    first, second = await asyncio.gather(
        executor.advance(runtime, cid, 0), executor.advance(runtime, cid, 0)
    )
    assert first.step == second.step == 1
    assert len(fake.texts_to(USER)) == 1


async def test_a_status_callback_arriving_after_the_replay_started_waiting_reconciles_it(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    """The late-callback path: the send timed out (uncertain), the replay is already waiting
    for Meta's callback when it comes; the message is not sent a second time."""
    runtime.reconcile_seconds = 5
    cid = await start_conversation(db, runtime, campaign_name)
    fake.hold_next(3)  # longer than the client's 2 s timeout
    try:
        await executor.advance(runtime, cid, 0)
    except Exception as exc:
        assert "timed out" in str(exc)
    replay = asyncio.create_task(executor.advance(runtime, cid, 0))
    await asyncio.sleep(0.5)
    assert not replay.done()  # it waits for the callback instead of sending
    wamid = fake.received[-1]["_wamid"]  # Meta did accept the timed-out send
    callback = build_status_payload(
        phone_number_id=PHONE_ID,
        message_id=wamid,
        status="delivered",
        recipient=USER,
        client_ref=step_ref(cid, 0),
    )
    await inbox.store_batch(db, parse_webhook(json.dumps(callback).encode()), campaign_name)
    cursor = await replay
    assert cursor.step == 1
    assert len(fake.texts_to(USER)) == 1


async def test_cancelling_a_conversation_drops_what_it_had_not_sent(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid = await start_conversation(db, runtime, campaign_name)
    cursor = await executor.advance(runtime, cid, 0)  # greets, then waits for the name
    await inbox.store_batch(db, make_batch("Ana"), campaign_name)
    assert await handshake.wait_hot(runtime, cid, cursor.step, 0.1)
    await executor.mark_cancelled(runtime, cid, "cancelled by an operator")
    after = await executor.advance(runtime, cid, cursor.step)
    assert after.status is Status.CANCELLED
    assert fake.texts_to(USER) == ["Hi, welcome aboard! What's your name?"]
    detail = await views.show_conversation(db, cid)
    assert detail["last_error"] == "cancelled by an operator"
