"""A hard bounce or a complaint about an email we sent suppresses the recipient and ends the
sequence (before, a bounce only failed the message and the sequence went on); a soft bounce
does neither. Read through the email webhook's own parser, stored by the inbox as the webhook
does, with a real loopback SMTP server carrying the first email. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.fakes.email_payloads import build_bounce, build_delivery_event
from devkit.fakes.smtp_server import LoopbackSMTPServer
from parley import suppression
from parley.campaign.registry import install_campaign
from parley.channels.base import InboundBatch
from parley.channels.email.wire import message_id_for, parse_inbound
from parley.clock import DrivenClock
from parley.conversation import executor, handshake, inbox, lifecycle
from parley.conversation.handshake import WakeUp
from parley.db import Database, queries
from parley.db.models import Identity
from parley.errors import MalformedPayload
from parley.outreach import dispatch
from parley.runtime import Runtime
from parley.vocabulary import Status
from tests.dispatching.test_outreach import _actions, _until_waiting, clock, rt

__all__ = ["clock", "rt"]  # fixtures, used by name

MAILBOX = "me@example.com"
LEAD = "lead@example.com"
FLOW_RUN = "5f0c5a8e-0000-4000-8000-000000000001"
SEQUENCE = """
name: mail-sequence
channel: email
inputs: [first_name]
start: first
nodes:
  - {id: first, type: send, action: email, subject: "Hello", text: "Hello {first_name}"}
  - {id: wait, type: wait_for_reply, timeout: 3d}
  - {id: second, type: send, action: email, subject: "Again", text: "Still there?"}
  - {id: thanks, type: end}
  - {id: done, type: end}
edges:
  - {from: first, to: wait}
  - {from: wait, to: thanks, when: replied}
  - {from: wait, to: second, when: no_reply}
  - {from: second, to: done}
"""
NO_SPACING = {"actions": {"email": {"spacing": "0s"}}}
EVERY_DAY = {d: ["00:00-23:59"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@pytest.fixture
def smtp() -> Iterator[LoopbackSMTPServer]:
    server = LoopbackSMTPServer()
    server.start()
    yield server
    server.stop()


async def _first_email_sent_and_asleep(
    db: Database, rt: Runtime, smtp: LoopbackSMTPServer, tmp_path: Path
) -> tuple[int, int, str]:
    """The lead's first email went out through SMTP; the run sleeps at ``wait``. Returns the
    identity, the conversation and the Message-ID the email carried."""
    path = tmp_path / "mail.yaml"
    path.write_text(SEQUENCE)
    async with db.transaction() as session:
        await install_campaign(session, path)
        identity = Identity(
            channel="email",
            address=MAILBOX,
            timezone="UTC",
            policy={"working_hours": {"weekly": EVERY_DAY}, "limits": NO_SPACING},
            settings=smtp.smtp_settings(),
        )
        session.add(identity)
        await session.flush()
        identity_id = identity.id
    change = await lifecycle.start(
        db,
        "mail-sequence",
        identity_id,
        channel="email",
        address=LEAD,
        variables={"first_name": "Lea"},
    )
    cid = change.conversation_id
    await executor.begin_run(rt, cid, FLOW_RUN)
    await _until_waiting(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, random.Random(7)) == "sent"
    assert smtp.wait_for_messages(1, 5)
    cursor = await executor.run_step(rt, cid, (await _until_waiting(rt, cid)).step)
    cursor = await _until_waiting(rt, cid)  # the outcome moved it on to the reply wait
    assert cursor.node == "wait", cursor
    assert (await handshake.prepare_suspend(rt, cid, cursor.step)).suspend
    [received] = smtp.messages
    return identity_id, cid, str(received.message["Message-ID"])


async def _store(db: Database, payload: dict[str, object]) -> inbox.StoreResult:
    batch: InboundBatch = parse_inbound(json.dumps(payload).encode())
    return await inbox.store_batch(db, batch, None, settle_action=dispatch.reconcile_status)


async def _status(db: Database, cid: int) -> tuple[Status, str | None]:
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, cid)
        return row.status, row.last_error


async def _listed(db: Database) -> list[tuple[str, str, str | None]]:
    async with db.read() as session:
        return [
            (s.address, s.reason, s.created_by)
            for s in await suppression.list_suppressions(session)
        ]


async def test_a_hard_bounce_suppresses_the_recipient_and_ends_the_sequence(
    db: Database, rt: Runtime, smtp: LoopbackSMTPServer, tmp_path: Path, clock: DrivenClock
) -> None:
    identity_id, cid, message_id = await _first_email_sent_and_asleep(db, rt, smtp, tmp_path)
    bounce = build_bounce(message_id=message_id, sender=MAILBOX, recipient="Lead@Example.com")
    result = await _store(db, bounce)
    assert result.statuses == 1
    assert await _listed(db) == [(LEAD, "bounced", "email bounced")]
    status, reason = await _status(db, cid)
    assert status is Status.COMPLETED and reason == f"suppressed: {LEAD} bounced"
    assert result.outcome_wakeups == [WakeUp(cid, "resume", FLOW_RUN)]  # its run finishes
    assert not (await executor.begin_run(rt, cid, FLOW_RUN)).active
    again = await _store(db, bounce)  # the relay delivers it twice
    assert again.outcome_wakeups == [] and len(await _listed(db)) == 1
    assert [a.type for a in await _actions(db, identity_id)] == ["email"]  # no second email


async def test_a_complaint_suppresses_the_recipient_as_complained(
    db: Database, rt: Runtime, smtp: LoopbackSMTPServer, tmp_path: Path, clock: DrivenClock
) -> None:
    _, cid, message_id = await _first_email_sent_and_asleep(db, rt, smtp, tmp_path)
    complaint = build_delivery_event(
        "complained", message_id=message_id, sender=MAILBOX, recipient=LEAD
    )
    await _store(db, complaint)
    assert await _listed(db) == [(LEAD, "complained", "email complained")]
    assert (await _status(db, cid))[0] is Status.COMPLETED


@pytest.mark.parametrize(
    "soft", [{"bounce": "soft"}, {"code": 421, "reason": "421 4.7.0 try again later"}]
)
async def test_a_soft_bounce_neither_suppresses_nor_ends(
    db: Database,
    rt: Runtime,
    smtp: LoopbackSMTPServer,
    tmp_path: Path,
    clock: DrivenClock,
    soft: dict[str, object],
) -> None:
    _, cid, message_id = await _first_email_sent_and_asleep(db, rt, smtp, tmp_path)
    bounce = build_bounce(message_id=message_id, sender=MAILBOX, recipient=LEAD)
    await _store(db, {**bounce, **soft})
    assert await _listed(db) == []
    assert (await _status(db, cid))[0] is Status.SUSPENDED


async def test_a_bounce_of_an_email_we_cannot_place_still_suppresses_the_address(
    db: Database,
) -> None:
    unknown = message_id_for("conv-999-step-1", "example.com")
    result = await _store(
        db, build_bounce(message_id=unknown, sender=MAILBOX, recipient="ghost@example.com")
    )
    assert result.statuses == 0  # recorded as an unmatched status, as before
    assert await _listed(db) == [("ghost@example.com", "bounced", "email bounced")]


def test_a_bounce_kind_other_than_hard_or_soft_is_refused() -> None:
    body = build_bounce(message_id="<x@example.com>", sender=MAILBOX, recipient=LEAD)
    with pytest.raises(MalformedPayload, match="'bounce'"):
        parse_inbound(json.dumps({**body, "bounce": "maybe"}).encode())


def test_bounce_kinds_read_from_the_contract() -> None:
    def suppresses(**fields: object) -> object:
        body = build_bounce(message_id="<x@example.com>", sender=MAILBOX, recipient=LEAD)
        [status] = parse_inbound(json.dumps({**body, **fields}).encode()).statuses
        return status.suppresses

    assert suppresses() == "bounced"  # 550
    assert suppresses(code=None) == "bounced"  # a provider's "bounced" is permanent
    assert suppresses(code=452) is None
    assert suppresses(code=452, bounce="hard") == "bounced"
    assert suppresses(bounce="soft") is None
