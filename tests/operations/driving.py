"""Driving onboarding conversations of several contacts through the step executor, on a clock
the test sets, the way a run would: begin, step until it waits, suspend."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devkit.fakes.whatsapp_payloads import build_text_message_payload
from parley.campaign.registry import install_campaign
from parley.channels.whatsapp.wire import parse_webhook
from parley.conversation import executor, handshake, inbox, operator_views
from parley.conversation.state_machine import Cursor
from parley.db import Database, queries
from parley.runtime import Runtime
from tests.storage.conftest import PHONE_ID

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)


class SetClock:
    """Time stands still until the test moves it."""

    def __init__(self, at: datetime = START) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


def on_clock(runtime: Runtime, clock: SetClock) -> Runtime:
    return replace(runtime, clock=clock)


async def say(db: Database, campaign: str, phone: str, text: str) -> int | None:
    """The contact writes; returns the conversation it started, if it started one."""
    payload = build_text_message_payload(
        phone_number_id=PHONE_ID, from_phone=phone, text=text, contact_name="Contact"
    )
    result = await inbox.store_batch(db, parse_webhook(json.dumps(payload).encode()), campaign)
    started = [w.conversation_id for w in result.wakeups if w.action == "start"]
    return started[0] if started else None


async def start(db: Database, rt: Runtime, campaign: str, phone: str) -> int:
    conversation_id = await say(db, campaign, phone, "hi")
    assert conversation_id is not None
    await executor.begin_run(rt, conversation_id, None)
    await settle(rt, conversation_id)
    return conversation_id


async def settle(rt: Runtime, conversation_id: int) -> Cursor:
    """Step until the conversation waits with nothing to read, or ends."""
    cursor = await executor.current_cursor(rt, conversation_id)
    for _ in range(40):
        if not cursor.active:
            return cursor
        if cursor.wait is not None:
            async with rt.db.read() as session:
                if not await queries.messages.has_unconsumed_inbound(session, conversation_id):
                    return cursor
        cursor = await executor.run_step(rt, conversation_id, cursor.step)
    raise AssertionError(f"conversation {conversation_id} did not settle: {cursor}")


async def answer(db: Database, rt: Runtime, campaign: str, phone: str, text: str) -> Cursor:
    conversation_id = await conversation_of(db, phone)
    await say(db, campaign, phone, text)
    return await settle(rt, conversation_id)


async def suspend(rt: Runtime, conversation_id: int) -> None:
    """What the flow does once the conversation waits: the row says suspended, no lease."""
    cursor = await executor.current_cursor(rt, conversation_id)
    decision = await handshake.prepare_suspend(rt, conversation_id, cursor.step)
    assert decision.suspend, cursor


async def resume(rt: Runtime, conversation_id: int, flow_run_id: str) -> Cursor:
    """A resumed (or new) run takes the conversation over and looks again."""
    cursor = await executor.begin_run(rt, conversation_id, flow_run_id)
    return await executor.run_step(rt, conversation_id, cursor.step)


async def conversation_of(db: Database, phone: str) -> int:
    rows = await operator_views.list_conversations(db)
    return int(next(r["id"] for r in rows if r["contact"] == phone))


async def install(db: Database, path: Path) -> int:
    async with db.transaction() as session:
        return (await install_campaign(session, path)).version
