"""A campaign's status decides whether its conversations go: a published campaign is a draft
whose leads wait at the pause gate (nothing is queued, nothing reaches the gateway) until it is
activated; an archived one accepts no new lead while its running ones finish. On SQLite and
PostgreSQL, with the dispatcher's own functions, the loopback LinkedIn gateway and the driven
clock; runs are driven step by step as the worker would."""

from __future__ import annotations

from uuid import uuid4

import pytest

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley.campaign import publishing
from parley.campaign.status import check_accepts_new_conversations
from parley.conversation import executor, handshake, inbox, lifecycle
from parley.conversation import operator_views as views
from parley.conversation.state_machine import Cursor
from parley.db import Database, queries
from parley.errors import NotFound, TransitionNotAllowed
from parley.outreach import dispatch
from parley.runtime import Runtime
from parley.vocabulary import CampaignStatus, Status, WaitKind
from tests.dispatching.test_outreach import (  # the outreach scenarios' fixtures and helpers
    SEQUENCE,
    _actions,
    _identity,
    _lead,
    _look_again,
    _seeded,
    _until_waiting,
    campaign,
    clock,
    gateway,
    rt,
)
from tests.storage.conftest import campaign_name, make_batch

__all__ = ["campaign", "campaign_name", "clock", "gateway", "rt"]  # fixtures, used by name


async def _row(db: Database, conversation_id: int) -> object:
    async with db.read() as session:
        return await queries.conversations.get_conversation(session, conversation_id)


DRAFT_SEQUENCE = SEQUENCE.replace("name: li-sequence", "name: li-draft")


async def _draft(db: Database) -> str:
    published = await publishing.publish(db, DRAFT_SEQUENCE)
    assert published.status is CampaignStatus.DRAFT
    return published.name


async def _to_the_gate(rt: Runtime, conversation_id: int) -> Cursor:
    """The run's next step: a held conversation stops there (paused, no wait)."""
    cursor = await executor.current_cursor(rt, conversation_id)
    return await executor.run_step(rt, conversation_id, cursor.step)


async def test_a_draft_campaigns_lead_waits_at_the_gate_until_the_campaign_is_activated(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway
) -> None:
    name = await _draft(db)
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, name, identity_id, 1)
    await executor.begin_run(rt, cid, str(uuid4()))

    cursor = await _to_the_gate(rt, cid)  # the run's first step meets the gate

    row = await _row(db, cid)
    assert (cursor.status, row.status, row.paused_by) == (  # type: ignore[attr-defined]
        Status.PAUSED,
        Status.PAUSED,
        "campaign",
    )
    assert await _actions(db, identity_id) == []  # its run queued nothing
    assert gateway.performed == []

    activated = await lifecycle.activate_campaign(db, name)

    assert activated.status is CampaignStatus.ACTIVE
    assert [c.conversation_id for c in activated.changes] == [cid]
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("visit", WaitKind.ACTION)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert [a.kind for a in gateway.performed] == ["profile_visit"]


async def test_a_sleeping_conversation_of_a_draft_is_released_by_activate_like_a_resume(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway
) -> None:
    name = await _draft(db)
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, name, identity_id, 1)
    await executor.begin_run(rt, cid, str(uuid4()))
    cursor = await _to_the_gate(rt, cid)
    await handshake.prepare_suspend(rt, cid, cursor.step)  # the run suspends at the gate

    [change] = (await lifecycle.activate_campaign(db, name)).changes

    assert change.run == "resume" and change.status is Status.SUSPENDED


async def test_an_archived_campaign_refuses_new_leads_and_its_running_ones_finish(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway)
    running = await _lead(db, rt, campaign, identity_id, 1)
    await _until_waiting(rt, running)

    archived = await lifecycle.archive_campaign(db, campaign, "season over")

    assert archived.status is CampaignStatus.ARCHIVED
    with pytest.raises(TransitionNotAllowed, match="archived: it accepts no new conversations"):
        await _lead(db, rt, campaign, identity_id, 2)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"  # not held
    cursor = await _look_again(rt, running)
    assert cursor.status is not Status.PAUSED and cursor.node == "connect"

    await lifecycle.activate_campaign(db, campaign)  # an archive is taken back explicitly
    assert await _lead(db, rt, campaign, identity_id, 3)


async def test_status_moves_are_checked_and_repeating_one_changes_nothing(
    db: Database, campaign: str
) -> None:
    draft = await _draft(db)
    with pytest.raises(TransitionNotAllowed, match="is a draft"):
        await lifecycle.pause_campaign(db, draft)
    with pytest.raises(TransitionNotAllowed, match="is a draft, not paused"):
        await lifecycle.resume_campaign(db, draft)
    with pytest.raises(TransitionNotAllowed, match="is not paused"):
        await lifecycle.resume_campaign(db, campaign)  # installed from a file: active
    assert (await lifecycle.activate_campaign(db, campaign)).changes == ()  # already active

    assert (await lifecycle.pause_campaign(db, campaign, "copy review")).status == "paused"
    assert (await lifecycle.pause_campaign(db, campaign)).status == "paused"  # again: fine
    assert (await lifecycle.archive_campaign(db, campaign)).status == "archived"
    with pytest.raises(TransitionNotAllowed, match="is archived"):
        await lifecycle.pause_campaign(db, campaign)
    with pytest.raises(TransitionNotAllowed, match="is archived, not paused"):
        await lifecycle.resume_campaign(db, campaign)
    assert (await lifecycle.archive_campaign(db, draft)).status == "archived"  # never used
    with pytest.raises(NotFound):
        await lifecycle.activate_campaign(db, "no-such-campaign")


async def test_a_draft_holding_a_lead_at_its_gate_cannot_be_archived(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway
) -> None:
    """Its lead would wait for ever: activate it, or cancel the lead, first."""
    name = await _draft(db)
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, name, identity_id, 1)

    with pytest.raises(TransitionNotAllowed, match="holds 1 conversation"):
        await lifecycle.archive_campaign(db, name)
    await lifecycle.cancel(db, cid, "published by mistake")
    assert (await lifecycle.archive_campaign(db, name)).status == "archived"


async def test_publishing_a_new_version_keeps_the_status_and_new_leads_get_the_newest(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    await lifecycle.pause_campaign(db, campaign)
    v2 = await publishing.publish(db, SEQUENCE.replace("let's connect", "shall we connect"))
    assert (v2.name, v2.version, v2.status) == (campaign, 2, CampaignStatus.PAUSED)
    identity_id = await _identity(db, gateway)
    cid = await _lead(db, rt, campaign, identity_id, 1)
    async with db.read() as session:
        version = await queries.campaigns.get_campaign_version(
            session,
            (await queries.conversations.get_conversation(session, cid)).campaign_version_id,
        )
        await check_accepts_new_conversations(session, campaign)  # paused: accepted
    assert version.version == 2


async def test_a_new_contacts_message_to_an_archived_default_campaign_starts_nothing(
    db: Database, campaign_name: str
) -> None:
    """Inbound WhatsApp: the message is recorded as unmatched, no conversation is opened."""
    await lifecycle.archive_campaign(db, campaign_name)

    result = await inbox.store_batch(db, make_batch("hi"), campaign_name)

    assert (result.stored, result.wakeups) == (0, [])
    assert await views.list_conversations(db) == []
    await lifecycle.activate_campaign(db, campaign_name)
    assert (await inbox.store_batch(db, make_batch("hi again"), campaign_name)).stored == 1
