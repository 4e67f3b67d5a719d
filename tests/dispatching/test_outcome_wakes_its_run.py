"""An outreach action's outcome wakes the run waiting for it by its own path, not by a repair.

The dispatcher records the outcome and the row's wake request in one transaction and hands the
suspended run to ``wake`` right after that commit (the Prefect side resumes it with reason
``action``); a provider's status callback that settles an uncertain action does the same through
the webhook. The repair pass (``owed_a_look``) is only the safety net for a resume that got lost.
"""

from __future__ import annotations

import json
from pathlib import Path

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_status_payload
from parley.channels.whatsapp.wire import parse_webhook
from parley.clock import DrivenClock
from parley.conversation import handshake, inbox
from parley.conversation.handshake import WakeUp
from parley.db import Database
from parley.db.models import Conversation
from parley.outreach import dispatch
from parley.runtime import Runtime
from parley.vocabulary import Status, WaitKind
from tests.dispatching import test_exactly_once as once
from tests.dispatching.test_exactly_once import PHONE_ID, WHATSAPP_TIMEOUT, _lead
from tests.dispatching.test_outreach import _seeded, _until_waiting

# The same fake WhatsApp API and runtime (driven clock, Tuesday 10:00) as the exactly-once tests.
whatsapp = once.whatsapp
rt = once.rt

FLOW_RUN = "0b7c6a52-1f0e-4c41-9a57-3f3f7f1d2a10"


async def _suspended(db: Database, rt: Runtime, conversation_id: int) -> None:
    """The run parks on the action as the flow does: its run id on the row, then the
    handshake's suspend."""
    async with db.transaction() as session:
        row = await session.get(Conversation, conversation_id)
        assert row is not None
        row.flow_run_id = FLOW_RUN  # arranged: the run the worker created
    cursor = await _until_waiting(rt, conversation_id)
    assert cursor.wait is not None and cursor.wait.kind is WaitKind.ACTION
    decision = await handshake.prepare_suspend(rt, conversation_id, cursor.step)
    assert decision.suspend


async def _row(db: Database, conversation_id: int) -> Conversation:
    async with db.read() as session:
        row = await session.get(Conversation, conversation_id)
        assert row is not None
        return row


async def test_the_dispatcher_resumes_a_suspended_run_right_after_the_outcome_it_waits_for_commits(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path, "whatsapp", {})
    await _suspended(db, rt, cid)
    seen: list[tuple[WakeUp, dict[str, object] | None]] = []

    async def wake(wakeup: WakeUp) -> None:
        # Called after the commit: another session already reads the outcome.
        seen.append((wakeup, (await _row(db, wakeup.conversation_id)).task_result))

    await dispatch.drain(rt, identity_id, _seeded(), limit=5, wake=wake)

    [(wakeup, result)] = seen
    assert wakeup == WakeUp(cid, "resume", FLOW_RUN)
    assert result is not None and result["outcome"] == "sent"
    assert len(whatsapp.received) == 1


async def test_a_run_still_awake_is_not_resumed_it_reads_the_outcome_itself(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path, "whatsapp", {})
    woken: list[WakeUp] = []

    async def wake(wakeup: WakeUp) -> None:
        woken.append(wakeup)

    await dispatch.drain(rt, identity_id, _seeded(), limit=5, wake=wake)

    assert woken == []
    row = await _row(db, cid)
    assert row.status is not Status.SUSPENDED
    assert row.task_result is not None and row.task_result["outcome"] == "sent"


async def test_a_run_about_to_suspend_after_its_outcome_came_keeps_going_instead(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    """The outcome lands between the run's last look and its suspend: the handshake's lock
    sees it, so the run goes on at once rather than sleeping until a repair."""
    identity_id, cid = await _lead(db, rt, tmp_path, "whatsapp", {})
    cursor = await _until_waiting(rt, cid)
    await dispatch.drain(rt, identity_id, _seeded(), limit=5)

    decision = await handshake.prepare_suspend(rt, cid, cursor.step)

    assert not decision.suspend
    assert (await _row(db, cid)).status is not Status.SUSPENDED


async def test_a_status_callback_settling_an_uncertain_action_resumes_the_run_waiting_for_it(
    db: Database, rt: Runtime, whatsapp: FakeWhatsAppAPI, tmp_path: Path
) -> None:
    identity_id, cid = await _lead(db, rt, tmp_path, "whatsapp", {})
    await _suspended(db, rt, cid)
    whatsapp.hold_next(WHATSAPP_TIMEOUT + 1)  # Meta takes the template; our call times out
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "uncertain"
    assert (await _row(db, cid)).task_result is None  # nothing to wake for yet
    [record] = whatsapp.received
    payload = build_status_payload(
        phone_number_id=PHONE_ID,
        message_id=record["_wamid"],
        status="sent",
        recipient=str(record["to"]),
        client_ref=record.get("biz_opaque_callback_data"),
    )

    result = await inbox.store_batch(
        db,
        parse_webhook(json.dumps(payload).encode()),
        None,
        settle_action=dispatch.reconcile_status,
    )

    assert result.outcome_wakeups == [WakeUp(cid, "resume", FLOW_RUN)]
    assert result.wakeups == []  # no message: nothing for the inbox's own wake
    row = await _row(db, cid)
    assert row.task_result is not None and row.task_result["outcome"] == "sent"
    assert row.wake_requested_at is not None  # the repair's safety net stays armed
    assert isinstance(rt.clock, DrivenClock)
