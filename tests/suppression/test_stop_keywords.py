"""A contact who answers "STOP" (or the campaign's own stop keywords) is suppressed and its
conversation ends, on WhatsApp with a confirmation — once, however often the webhook delivers
the message, and also while the conversation's run is in the middle of a step. The onboarding
campaign on the loopback WhatsApp Cloud API; SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from parley import suppression
from parley.campaign.model import DEFAULT_STOP_CONFIRMATION
from parley.campaign.registry import install_campaign
from parley.conversation import executor, handshake, inbox, opt_out
from parley.conversation.handshake import WakeUp
from parley.db import Database, queries
from parley.runtime import Runtime
from parley.vocabulary import Status
from tests.storage.conftest import (
    ROOT,
    USER,
    campaign_name,
    crm,
    fake,
    make_batch,
    runtime,
    start_conversation,
)

__all__ = ["campaign_name", "crm", "fake", "runtime"]  # fixtures, used by name

FLOW_RUN = "9b2f6d1e-0000-4000-8000-000000000002"


async def _asked_its_name(db: Database, rt: Runtime, campaign: str) -> tuple[int, int]:
    """The bot asked the contact's name; the conversation waits for the answer."""
    cid = await start_conversation(db, rt, campaign)
    cursor = await executor.advance(rt, cid, 0)
    assert cursor.awaiting_reply
    return cid, cursor.step


async def _row_status(db: Database, cid: int) -> tuple[Status, str | None]:
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, cid)
        return row.status, row.last_error


async def _listed(db: Database) -> list[tuple[str, str]]:
    async with db.read() as session:
        return [(s.address, s.reason) for s in await suppression.list_suppressions(session)]


@pytest.mark.parametrize("text", ["STOP", "  stop! ", "Baja.", "unsubscribe", "ABMELDEN"])
async def test_stop_suppresses_ends_and_confirms_once_however_often_it_is_delivered(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI, text: str
) -> None:
    cid, step = await _asked_its_name(db, runtime, campaign_name)
    await executor.begin_run(runtime, cid, FLOW_RUN)
    assert (await handshake.prepare_suspend(runtime, cid, step)).suspend  # asleep
    result = await inbox.store_batch(db, make_batch(text, "wamid.stop"), campaign_name)
    assert result.confirmations == [cid]
    assert result.wakeups == [WakeUp(cid, "resume", FLOW_RUN)]  # its run finishes
    status, reason = await _row_status(db, cid)
    assert status is Status.COMPLETED and reason is not None and reason.startswith("suppressed")
    assert await _listed(db) == [(f"+{USER}", "unsubscribed")]
    assert await opt_out.send_confirmation(runtime, cid)  # what the webhook does after commit
    again = await inbox.store_batch(db, make_batch(text, "wamid.stop"), campaign_name)
    assert (again.duplicates, again.confirmations, again.wakeups) == (1, [], [])
    assert not await opt_out.send_confirmation(runtime, cid)
    texts = fake.texts_to(USER)
    assert len(texts) == 2 and texts[-1] == DEFAULT_STOP_CONFIRMATION
    assert not (await executor.begin_run(runtime, cid, FLOW_RUN)).active


async def test_stop_while_the_run_is_mid_step_ends_it_at_its_next_boundary(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid, step = await _asked_its_name(db, runtime, campaign_name)  # live: it holds its lease
    result = await inbox.store_batch(db, make_batch("stop", "wamid.stop"), campaign_name)
    assert result.wakeups == []  # a live run is not resumed: it sees the end itself
    cursor = await executor.advance(runtime, cid, step)  # the run's next step
    assert not cursor.active
    assert (await _row_status(db, cid))[0] is Status.COMPLETED
    assert len(fake.texts_to(USER)) == 1  # the stop was not read as the contact's name


async def test_a_sentence_that_merely_contains_stop_is_an_ordinary_answer(
    db: Database, runtime: Runtime, campaign_name: str, fake: FakeWhatsAppAPI
) -> None:
    cid, step = await _asked_its_name(db, runtime, campaign_name)
    result = await inbox.store_batch(db, make_batch("Stop Watson", "wamid.name"), campaign_name)
    assert result.confirmations == []
    cursor = await executor.advance(runtime, cid, step)
    assert cursor.active
    assert await _listed(db) == []


async def test_a_campaign_names_its_own_stop_keywords_and_may_send_no_confirmation(
    db: Database, runtime: Runtime, fake: FakeWhatsAppAPI, tmp_path: Path, crm: object
) -> None:
    source = (ROOT / "examples/campaigns/onboarding.yaml").read_text()
    path = tmp_path / "halt.yaml"
    path.write_text(
        source.replace("name: onboarding", "name: onboarding-halt", 1)
        + "\nstop_keywords: [halt, 'no more']\nstop_confirmation: ''\n"
    )
    async with db.transaction() as session:
        await install_campaign(session, path)
    cid, _ = await _asked_its_name(db, runtime, "onboarding-halt")
    assert (await inbox.store_batch(db, make_batch("STOP", "w1"), "onboarding-halt")).stored == 1
    assert (await _row_status(db, cid))[0] is not Status.COMPLETED  # not this campaign's word
    result = await inbox.store_batch(db, make_batch("No more!", "w2"), "onboarding-halt")
    assert result.confirmations == []
    assert (await _row_status(db, cid))[0] is Status.COMPLETED
    assert await _listed(db) == [(f"+{USER}", "unsubscribed")]
    assert len(fake.texts_to(USER)) == 1  # the question only
