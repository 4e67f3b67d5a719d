"""The ``add_to_campaign`` node, on SQLite and PostgreSQL: a conversation starts its lead in
another campaign through the lead import's path and checks, and leaves by the outcome's edge
(``{task_result: started|skipped|invalid}``): started as another identity (its inputs from the
conversation's variables, its run left to the dispatcher's paced start); skipped when the lead
is suppressed or already in a conversation with that identity; invalid for an unknown
campaign; as the same identity the conversation hands its lead over and ends. A replayed step
starts nothing twice. The validator names the node of an uncovered outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from parley import suppression
from parley.campaign import parse_campaign
from parley.campaign.registry import CampaignCache, install_campaign
from parley.clock import DrivenClock
from parley.conversation import executor, funnel, lead_import, lifecycle
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.db.models import Conversation, Identity, LeadImport
from parley.errors import CampaignInvalid
from parley.runtime import Runtime
from parley.vocabulary import Status

NURTURE = """
name: nurture
channel: linkedin
inputs: [first_name]
start: later
nodes:
  - {id: later, type: wait, duration: 30d}
  - {id: done, type: end}
edges:
  - {from: later, to: done}
"""


def _mover(target: str, identity: int | None) -> str:
    who = "" if identity is None else f", identity: {identity}"
    return f"""
name: mover
channel: linkedin
inputs: [first_name]
start: move
nodes:
  - {{id: move, type: add_to_campaign, campaign: {target}{who}}}
  - {{id: moved, type: end}}
  - {{id: not_moved, type: end}}
edges:
  - {{from: move, to: moved, when: {{task_result: started}}}}
  - {{from: move, to: not_moved}}
"""


@pytest.fixture
async def rt(db: Database, tmp_path: Path) -> AsyncIterator[Runtime]:
    yield Runtime(
        db=db,
        channels={},
        post_json=post_json,
        campaigns=CampaignCache(),
        lease_seconds=5,
        clock=DrivenClock(tmp_path / "offset"),
        outreach={},
    )


@pytest.fixture
async def seats(db: Database) -> tuple[int, int]:
    async with db.transaction() as session:
        first = Identity(channel="linkedin", address="seat-1", timezone="UTC")
        second = Identity(channel="linkedin", address="seat-2", timezone="UTC")
        session.add_all([first, second])
        await session.flush()
        return first.id, second.id


async def _install(db: Database, tmp_path: Path, name: str, source: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(source)
    async with db.transaction() as session:
        await install_campaign(session, path)


async def _run_mover(rt: Runtime, identity: int, profile: str) -> Conversation:
    change = await lifecycle.start(
        rt.db,
        "mover",
        identity,
        channel="linkedin",
        address=profile,
        variables={"first_name": "Ana"},
    )
    cursor = await executor.begin_run(rt, change.conversation_id, None)
    while cursor.active and cursor.wait is None:
        cursor = await executor.run_step(rt, change.conversation_id, cursor.step)
    return await _conversation(rt.db, change.conversation_id)


async def _conversation(db: Database, conversation_id: int) -> Conversation:
    async with db.read() as session:
        row = await session.get(Conversation, conversation_id)
        assert row is not None
        return row


async def _placements(db: Database) -> list[tuple[str, int | None]]:
    """What the node's one-row imports report (its task_result is gone once it left)."""
    async with db.read() as session:
        imports = (await session.execute(select(LeadImport.id))).scalars().all()
    rows = []
    for import_id in imports:
        view = await lead_import.progress(db, import_id)
        rows += [(row["outcome"], row["conversation_id"]) for row in view["rows"]]
    return rows


async def _in_campaign(db: Database, campaign: str) -> list[Conversation]:
    from parley.db.models import CampaignVersion

    async with db.read() as session:
        stmt = (
            select(Conversation)
            .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
            .where(CampaignVersion.name == campaign)
        )
        return list((await session.execute(stmt)).scalars())


async def test_the_lead_is_started_in_the_other_campaign_as_another_identity(
    db: Database, rt: Runtime, seats: tuple[int, int], tmp_path: Path
) -> None:
    first, second = seats
    await _install(db, tmp_path, "nurture", NURTURE)
    await _install(db, tmp_path, "mover", _mover("nurture", second))

    mover = await _run_mover(rt, first, "https://www.linkedin.com/in/ana")

    assert (mover.status, mover.current_node) == (Status.COMPLETED, "moved")
    [nurtured] = await _in_campaign(db, "nurture")
    assert nurtured.identity_id == second
    assert nurtured.contact_id == mover.contact_id
    assert nurtured.variables == {"first_name": "Ana"}
    assert nurtured.status is Status.PENDING and nurtured.import_id is not None  # paced start
    assert await _placements(db) == [("started", nurtured.id)]
    move = next(n for n in (await funnel.campaign_funnel(db, "mover")).nodes if n.node == "move")
    assert (move.type, move.reached, move.waiting_now) == ("add_to_campaign", 1, 0)


async def test_a_suppressed_lead_is_skipped_and_takes_the_other_edge(
    db: Database, rt: Runtime, seats: tuple[int, int], tmp_path: Path
) -> None:
    first, second = seats
    await _install(db, tmp_path, "nurture", NURTURE)
    await _install(db, tmp_path, "mover", _mover("nurture", second))
    async with db.transaction() as session:
        # For the seat it would move to: installation-wide, the mover itself is never started.
        await suppression.add(
            session, "https://www.linkedin.com/in/bo", "unsubscribed", identity_id=second
        )

    mover = await _run_mover(rt, first, "https://www.linkedin.com/in/bo")

    assert mover.current_node == "not_moved"
    assert await _placements(db) == [("skipped: suppressed (unsubscribed)", None)]
    assert await _in_campaign(db, "nurture") == []


async def test_a_lead_already_in_a_conversation_with_that_identity_is_skipped(
    db: Database, rt: Runtime, seats: tuple[int, int], tmp_path: Path
) -> None:
    first, second = seats
    await _install(db, tmp_path, "nurture", NURTURE)
    await _install(db, tmp_path, "mover", _mover("nurture", second))
    profile = "https://www.linkedin.com/in/cy"
    await lifecycle.start(
        db, "nurture", second, channel="linkedin", address=profile, variables={"first_name": "C"}
    )

    mover = await _run_mover(rt, first, profile)

    assert mover.current_node == "not_moved"
    [(outcome, _id)] = await _placements(db)
    assert outcome == "skipped: already in an active conversation with this identity"
    assert len(await _in_campaign(db, "nurture")) == 1


async def test_an_unknown_campaign_is_invalid_and_the_conversation_goes_on(
    db: Database, rt: Runtime, seats: tuple[int, int], tmp_path: Path
) -> None:
    first, _second = seats
    await _install(db, tmp_path, "mover", _mover("nowhere", None))

    mover = await _run_mover(rt, first, "https://www.linkedin.com/in/dee")

    assert mover.current_node == "not_moved"
    assert await _placements(db) == []  # nothing to import into: no import either


async def test_as_the_same_identity_the_conversation_hands_its_lead_over_and_ends(
    db: Database, rt: Runtime, seats: tuple[int, int], tmp_path: Path
) -> None:
    first, _second = seats
    await _install(db, tmp_path, "nurture", NURTURE)
    await _install(db, tmp_path, "mover", _mover("nurture", None))

    mover = await _run_mover(rt, first, "https://www.linkedin.com/in/eve")
    replay = await executor.run_step(rt, mover.id, mover.step - 1)  # a replayed step

    assert (mover.status, mover.current_node) == (Status.COMPLETED, "move")
    assert mover.last_error == "moved to campaign nurture"
    [nurtured] = await _in_campaign(db, "nurture")
    assert (nurtured.identity_id, nurtured.contact_id) == (first, mover.contact_id)
    assert replay.status is Status.COMPLETED
    assert len(await _in_campaign(db, "nurture")) == 1  # nothing started twice


def test_the_validator_names_the_node_whose_outcome_has_no_edge() -> None:
    source = _mover("nurture", None).replace("  - {from: move, to: not_moved}\n", "")

    with pytest.raises(CampaignInvalid) as refused:
        parse_campaign(source)
    bogus = _mover("nurture", None).replace("task_result: started", "task_result: maybe")
    with pytest.raises(CampaignInvalid) as refused_bogus:
        parse_campaign(bogus)

    assert any(
        node == "move" and "needs an edge for outcome 'skipped', 'invalid'" in message
        for node, message in refused.value.problems
    ), refused.value.problems
    assert any(
        "'task_result: maybe' is not an outcome of add_to_campaign 'move'" in message
        for _node, message in refused_bogus.value.problems
    ), refused_bogus.value.problems


def test_a_loop_through_add_to_campaign_that_never_waits_is_refused() -> None:
    """Its outcome is known at once: unlike a task's, its edges do not wait for anyone."""
    source = """
name: loopy
start: move
nodes:
  - {id: move, type: add_to_campaign, campaign: nurture}
  - {id: again, type: branch}
edges:
  - {from: move, to: again, when: {task_result: skipped}}
  - {from: move, to: again}
  - {from: again, to: move}
"""
    with pytest.raises(CampaignInvalid) as refused:
        parse_campaign(source)

    assert any("never waits" in message for _node, message in refused.value.problems)
