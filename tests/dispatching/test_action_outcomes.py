"""Which conversation an action's outcome is for, on SQLite and PostgreSQL: matched by the step
that queued it (a graph that comes back to a send node, a migration that renames it), and the
freshness check that skips an action the contact has written to since — including a reply the
conversation had not read yet when the action was queued. Against the loopback LinkedIn
gateway, on a driven clock."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from typer.testing import CliRunner

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley.campaign.registry import install_campaign
from parley.cli import app
from parley.clock import DrivenClock
from parley.conversation import executor, inbox, lifecycle
from parley.conversation.migration import MigrationRefused, migrate
from parley.db import Database, queries
from parley.db.migrate import alembic_config, upgrade
from parley.outreach import dispatch
from parley.runtime import Runtime
from parley.vocabulary import Status, WaitKind
from tests.dispatching.test_outreach import (  # noqa: F401  (fixtures)
    _actions,
    _identity,
    _look_again,
    _reply,
    _seeded,
    _suspend,
    _until_waiting,
    clock,
    gateway,
    rt,
)

LOOP = """
name: li-loop
channel: linkedin
inputs: [first_name]
on_reply: later
start: message
nodes:
  - {id: message, type: send, action: linkedin_message, text: "Hi {first_name}"}
  - {id: later, type: wait, duration: 1h}
  - {id: done, type: end}
edges:
  - {from: message, to: done}
  - {from: later, to: message}
"""

READ = """
name: li-read
channel: linkedin
inputs: [first_name]
on_reply: read
start: message
nodes:
  - {id: message, type: send, action: linkedin_message, text: "Hi {first_name}"}
  - {id: read, type: wait_for_reply, var: answer, timeout: 3d}
  - {id: thanks, type: end}
  - {id: done, type: end}
edges:
  - {from: message, to: done}
  - {from: read, to: thanks, when: replied}
  - {from: read, to: done, when: no_reply}
"""

INVITE_V1 = """
name: li-invite
channel: linkedin
inputs: [first_name]
start: connect
nodes:
  - {id: connect, type: send, action: linkedin_connection, text: "Hi {first_name}, let's connect"}
  - {id: done, type: end}
edges:
  - {from: connect, to: done}
"""

INVITE_V2 = """
name: li-invite
channel: linkedin
inputs: [first_name]
start: invite
nodes:
  - {id: invite, type: send, action: linkedin_connection, text: "Hello {first_name}"}
  - {id: mail, type: send, action: email, subject: "Parley", text: "Hello {first_name}"}
  - {id: listen, type: wait_for_reply, timeout: 3d}
  - {id: done, type: end}
edges:
  - {from: invite, to: listen}
  - {from: listen, to: done, when: replied}
  - {from: listen, to: mail, when: no_reply}
  - {from: mail, to: done}
"""

PROFILE = "https://linkedin.example/in/lead-1"


async def _install(db: Database, tmp_path: Path, source: str, file: str) -> str:
    path = tmp_path / file
    path.write_text(source)
    async with db.transaction() as session:
        return (await install_campaign(session, path)).name


async def _start(db: Database, campaign: str, identity_id: int) -> int:
    change = await lifecycle.start(
        db,
        campaign,
        identity_id,
        channel="linkedin",
        address=PROFILE,
        name="Lead 1",
        variables={"first_name": "Lead1"},
    )
    return change.conversation_id


async def _row(db: Database, conversation_id: int) -> Any:
    async with db.read() as session:
        return await queries.conversations.get_conversation(session, conversation_id)


# --- revisited send nodes ---------------------------------------------------------------------


async def test_revisited_send_node_ignores_the_outcome_of_its_earlier_visit(
    db: Database,
    rt: Runtime,  # noqa: F811
    gateway: FakeLinkedInGateway,  # noqa: F811
    clock: DrivenClock,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The lead replies while the first message waits: the conversation leaves by the
    campaign's `on_reply`, comes back an hour later and queues the message again. The first
    visit's action is skipped (the lead wrote) — an outcome for the first visit, not for the
    second, which still waits for its own message and moves on once that one is sent."""
    campaign = await _install(db, tmp_path, LOOP, "loop.yaml")
    identity_id = await _identity(db, gateway)
    cid = await _start(db, campaign, identity_id)
    await executor.begin_run(rt, cid, None)
    await _until_waiting(rt, cid)
    await _suspend(rt, cid)
    await inbox.store_batch(db, _reply(cid, PROFILE), campaign)
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("later", WaitKind.TIMER)
    clock.advance(timedelta(hours=1, minutes=1))
    cursor = await _until_waiting(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("message", WaitKind.ACTION)
    first, second = await _actions(db, identity_id)
    assert (first.status, second.status) == ("queued", "queued")
    assert first.payload["node"] == second.payload["node"] == "message"
    assert first.payload["step"] < second.payload["step"]

    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "skipped"
    first, second = await _actions(db, identity_id)
    assert (first.outcome, first.reason) == ("skipped", "the contact wrote after it was queued")
    row = await _row(db, cid)
    assert (row.current_node, row.waiting_for, row.task_result) == ("message", "action", None)
    assert row.action_step == second.payload["step"]

    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert [(a.kind, a.text) for a in gateway.performed] == [("message", "Hi Lead1")]
    assert [a.outcome for a in await _actions(db, identity_id)] == ["skipped", "sent"]
    cursor = await _look_again(rt, cid)
    assert (cursor.status, cursor.node) == (Status.COMPLETED, "done")
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"
    assert len(gateway.performed) == 1


async def test_an_action_of_an_earlier_visit_is_not_sent_while_the_node_waits_again(
    db: Database,
    rt: Runtime,  # noqa: F811
    gateway: FakeLinkedInGateway,  # noqa: F811
    clock: DrivenClock,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Failure path of the same match: an earlier visit's action whose freshness the lead's
    reply does not decide (its mark already counts the reply) is skipped as superseded by the
    step that queued the current one — never sent beside it, never its outcome."""
    campaign = await _install(db, tmp_path, LOOP, "loop.yaml")
    identity_id = await _identity(db, gateway)
    cid = await _start(db, campaign, identity_id)
    await executor.begin_run(rt, cid, None)
    await _until_waiting(rt, cid)
    await _suspend(rt, cid)
    await inbox.store_batch(db, _reply(cid, PROFILE), campaign)
    await _look_again(rt, cid)
    clock.advance(timedelta(hours=1, minutes=1))
    await _until_waiting(rt, cid)
    async with db.transaction() as session:  # as if queued after the reply, by an older step
        first, _second = await queries.actions.actions_of_conversation(session, cid)
        first.seen_inbound_id = await queries.messages.last_inbound_id(session, cid)

    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "skipped"
    first, _second = await _actions(db, identity_id)
    assert (first.outcome, first.reason) == ("skipped", "the conversation moved on")
    assert (await _row(db, cid)).task_result is None
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert len(gateway.performed) == 1


# --- freshness --------------------------------------------------------------------------------


async def test_reply_stored_but_unread_at_enqueue_makes_the_action_stale(
    db: Database,
    rt: Runtime,  # noqa: F811
    gateway: FakeLinkedInGateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The lead writes while the conversation is about to queue its message: the reply is
    stored (it counts in the action's ``seen_inbound_id``) but the step that queues the message
    does not read it. It is unread when the dispatcher comes: the message is not sent, and the
    conversation reads the reply at its `on_reply` node."""
    campaign = await _install(db, tmp_path, READ, "read.yaml")
    identity_id = await _identity(db, gateway)
    cid = await _start(db, campaign, identity_id)
    stored = await inbox.store_batch(db, _reply(cid, PROFILE), campaign)
    assert stored.stored == 1
    await executor.begin_run(rt, cid, None)
    cursor = await _until_waiting(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("message", WaitKind.ACTION)
    [action] = await _actions(db, identity_id)
    async with db.read() as session:
        assert action.seen_inbound_id == await queries.messages.last_inbound_id(session, cid)
        assert await queries.messages.has_unconsumed_inbound(session, cid)

    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "skipped"
    assert gateway.performed == []
    [action] = await _actions(db, identity_id)
    assert (action.outcome, action.reason) == (
        "skipped",
        "the contact wrote and the conversation has not read it yet",
    )
    cursor = await _look_again(rt, cid)
    assert (cursor.status, cursor.node) == (Status.COMPLETED, "thanks")
    row = await _row(db, cid)
    assert row.variables["answer"] == "sure, tell me more"
    async with db.read() as session:
        assert not await queries.messages.has_unconsumed_inbound(session, cid)


async def test_a_reply_already_read_at_enqueue_does_not_hold_the_action_back(
    db: Database,
    rt: Runtime,  # noqa: F811
    gateway: FakeLinkedInGateway,  # noqa: F811
    clock: DrivenClock,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The other side of the check: a reply the conversation has read (it brought it back to
    the node) is no reason to skip the node's next message."""
    campaign = await _install(db, tmp_path, LOOP, "loop.yaml")
    identity_id = await _identity(db, gateway)
    cid = await _start(db, campaign, identity_id)
    await executor.begin_run(rt, cid, None)
    await _until_waiting(rt, cid)
    await _suspend(rt, cid)
    await inbox.store_batch(db, _reply(cid, PROFILE), campaign)
    await _look_again(rt, cid)  # read: `on_reply` took it to `later`
    async with db.transaction() as session:  # the first message is out of the way
        first, *_ = await queries.actions.actions_of_conversation(session, cid)
        first.status, first.outcome = "done", "skipped"
    clock.advance(timedelta(hours=1, minutes=1))
    await _until_waiting(rt, cid)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert len(gateway.performed) == 1


# --- migration at an action node --------------------------------------------------------------


async def _waiting_to_connect(
    db: Database,
    rt: Runtime,  # noqa: F811
    gateway: FakeLinkedInGateway,  # noqa: F811
    tmp_path: Path,
) -> tuple[str, int, int]:
    campaign = await _install(db, tmp_path, INVITE_V1, "invite.yaml")
    identity_id = await _identity(db, gateway)
    cid = await _start(db, campaign, identity_id)
    await executor.begin_run(rt, cid, None)
    cursor = await _until_waiting(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("connect", WaitKind.ACTION)
    await _suspend(rt, cid)
    assert await _install(db, tmp_path, INVITE_V2, "invite_v2.yaml") == campaign
    return campaign, identity_id, cid


async def test_migrating_a_conversation_waiting_at_a_renamed_send_node_keeps_its_action(
    db: Database,
    rt: Runtime,  # noqa: F811
    gateway: FakeLinkedInGateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """v2 renames `connect` to `invite`: the suspended conversation moves with its queued
    invitation, which is sent exactly once (as it was queued), and its outcome moves the
    conversation on in v2."""
    campaign, identity_id, cid = await _waiting_to_connect(db, rt, gateway, tmp_path)
    done = await migrate(db, campaign, 2, {"connect": "invite"})
    assert [(m.conversation_id, m.from_node, m.to_node, m.fresh) for m in done.moved] == [
        (cid, "connect", "invite", False)
    ]
    [action] = await _actions(db, identity_id)
    assert (action.status, action.payload["node"]) == ("queued", "invite")
    row = await _row(db, cid)
    assert (row.current_node, row.waiting_for, row.action_step) == (
        "invite",
        "action",
        action.payload["step"],
    )

    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert [(a.kind, a.text) for a in gateway.performed] == [
        ("invitation", "Hi Lead1, let's connect")
    ]
    assert (await _row(db, cid)).task_result == {
        "outcome": "sent",
        "reason": None,
        "replied": False,
    }
    cursor = await _look_again(rt, cid)
    assert (cursor.node, cursor.wait and cursor.wait.kind) == ("listen", WaitKind.REPLY)
    async with db.read() as session:
        version = await queries.campaigns.get_campaign_version(
            session,
            (await queries.conversations.get_conversation(session, cid)).campaign_version_id,
        )
    assert version.version == 2
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "idle"
    assert len(gateway.performed) == 1


async def test_migrating_a_waiting_action_to_another_kind_of_node_is_refused_with_the_reason(
    cli_db: Database,
    rt: Runtime,  # noqa: F811
    gateway: FakeLinkedInGateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An invitation cannot become an email, nor a wait for a reply: nothing moves, the queued
    action still names its node, and the reason says so (CLI exit 2)."""
    db = cli_db
    campaign, identity_id, cid = await _waiting_to_connect(db, rt, gateway, tmp_path)
    before = (await _row(db, cid)).current_node, (await _actions(db, identity_id))[0].payload

    with pytest.raises(MigrationRefused) as refused:
        await migrate(db, campaign, 2, {"connect": "mail"})
    [unmapped] = refused.value.unmapped
    assert (unmapped.conversation_id, unmapped.node) == (cid, "connect")
    assert unmapped.reason == (
        "it waits for its linkedin_connection action; 'mail' in v2 is a send node with action "
        "email, not a send node with action linkedin_connection"
    )
    with pytest.raises(MigrationRefused, match="'listen' in v2 is a wait_for_reply node"):
        await migrate(db, campaign, 2, {"connect": "listen"})

    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["campaign", "migrate", campaign, "--to", "2", "--map", "connect=mail", "--json"],
    )
    assert result.exit_code == 2, result.output
    assert "linkedin_connection action" in json.loads(result.output)["unmapped"][0]["reason"]

    assert ((await _row(db, cid)).current_node, (await _actions(db, identity_id))[0].payload) == (
        before
    )
    assert (await _row(db, cid)).campaign_version_id == 1
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"  # still v1's
    assert (await _look_again(rt, cid)).status is Status.COMPLETED


async def test_a_conversation_waiting_for_its_action_across_the_upgrade_still_gets_its_outcome(
    db: Database,
    rt: Runtime,  # noqa: F811
    gateway: FakeLinkedInGateway,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Rows already waiting when ``action_step`` arrives (revision 0005) are given the step of
    the action they wait for: its outcome still reaches them after the upgrade."""
    campaign = await _install(db, tmp_path, INVITE_V1, "invite.yaml")
    identity_id = await _identity(db, gateway)
    cid = await _start(db, campaign, identity_id)
    await executor.begin_run(rt, cid, None)
    await _until_waiting(rt, cid)
    [action] = await _actions(db, identity_id)
    await db.dispose()  # no pooled connection holds the tables (or cached plans of them)
    await asyncio.to_thread(command.downgrade, alembic_config(db.url), "0004")
    await asyncio.to_thread(upgrade, db.url)
    await db.dispose()
    assert (await _row(db, cid)).action_step == action.payload["step"]
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert (await _row(db, cid)).task_result == {
        "outcome": "sent",
        "reason": None,
        "replied": False,
    }
