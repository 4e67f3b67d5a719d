"""Moving waiting conversations to a new campaign version, on SQLite and PostgreSQL: suspended
on version 1 of onboarding, migrated to a version 2 that renames a node and adds a `set` node,
they resume on the new graph and finish; a migration that would strand a conversation changes
nothing; the CLI and the REST API say the same."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from parley.cli import app
from parley.conversation import operator_views as views
from parley.conversation.funnel import campaign_funnel
from parley.conversation.migration import MigrationRefused, migrate
from parley.db import Database, queries
from parley.errors import NotFound
from parley.runtime import Runtime
from tests.operations.driving import (
    ROOT,
    SetClock,
    answer,
    install,
    on_clock,
    resume,
    settle,
    start,
    suspend,
)
from tests.operator_api import operator_api
from tests.storage.conftest import (  # noqa: F401  (fixtures)
    campaign_name,
    crm,
    fake,
    runtime,
)
from webhook.routes import campaigns as campaign_routes

V2 = ROOT / "tests/operations/fixtures/onboarding_v2.yaml"
ANA, BOB, CY = "34600000011", "34600000012", "34600000013"
API_KEY = "operator-key-for-tests-0123456789"
runner = CliRunner()


@pytest.fixture
def clock() -> SetClock:
    return SetClock()


@pytest.fixture
def rt(runtime: Runtime, clock: SetClock) -> Runtime:  # noqa: F811
    return on_clock(runtime, clock)


async def _ana_waits_for_her_email(db: Database, rt: Runtime, campaign: str) -> int:
    ana = await start(db, rt, campaign, ANA)
    await answer(db, rt, campaign, ANA, "Ana")
    await suspend(rt, ana)
    return ana


async def _state(db: Database, conversation_id: int) -> tuple[Any, ...]:
    async with db.read() as session:
        row = await queries.conversations.get_conversation(session, conversation_id)
        visits = await queries.visits.visits_of(session, conversation_id)
    return (
        row.campaign_version_id,
        row.current_node,
        row.status,
        row.version,
        row.waiting_for,
        [(v.node, v.outcome, v.campaign_version_id) for v in visits],
    )


async def test_suspended_conversations_move_to_v2_and_finish_on_its_new_node_type(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
    fake: Any,  # noqa: F811
    clock: SetClock,
) -> None:
    ana = await _ana_waits_for_her_email(db, rt, campaign_name)
    bob = await start(db, rt, campaign_name, BOB)
    await answer(db, rt, campaign_name, BOB, "Bob")
    await answer(db, rt, campaign_name, BOB, "bob@example.com")
    await suspend(rt, bob)  # waits at ask_plan
    cy = await start(db, rt, campaign_name, CY)  # its run is live: it keeps version 1
    assert await install(db, V2) == 2

    clock.advance(minutes=5)
    moved = await migrate(
        db, campaign_name, 2, {"ask_email": "ask_work_email", "ask_plan": "tag"}, clock=clock
    )
    assert [(m.conversation_id, m.from_node, m.to_node, m.fresh) for m in moved.moved] == [
        (ana, "ask_email", "ask_work_email", False),  # ask -> ask: still awaits the answer
        (bob, "ask_plan", "tag", True),  # ask -> set: entered afresh, its run looks again
    ]
    assert moved.staying == (cy,)

    shown = await views.show_conversation(db, ana)
    assert (shown["campaign_version"], shown["current_node"], shown["status"]) == (
        2,
        "ask_work_email",
        "suspended",
    )
    assert shown["wait"] == {"kind": "reply", "until": None}
    assert [(v["node"], v["outcome"], v["next_node"]) for v in shown["history"]][-2:] == [
        ("ask_email", "migrated", "ask_work_email"),
        ("ask_work_email", None, None),
    ]
    async with db.read() as session:
        assert (
            await queries.conversations.get_conversation(session, bob)
        ).wake_requested_at is not None
        assert (
            await queries.conversations.get_conversation(session, ana)
        ).wake_requested_at is None
    assert (await views.show_conversation(db, cy))["campaign_version"] == 1

    # Ana's run is resumed by her answer; it walks v2: ask_work_email -> tag (set) -> ask_plan.
    await resume(rt, ana, "run-after-migration")
    at_plan = await answer(db, rt, campaign_name, ANA, "ana@example.com")
    assert at_plan.node == "ask_plan"
    done = await answer(db, rt, campaign_name, ANA, "Pro")
    assert done.status.value == "completed"
    ana_detail = await views.show_conversation(db, ana)
    assert ana_detail["variables"]["segment"] == "self-serve"
    assert fake.texts_to(ANA)[-1] == "Welcome on board, Ana: you're on Pro."
    assert not any("work email" in text for text in fake.texts_to(ANA))  # no second prompt

    # Bob's run is resumed by the dispatcher (wake_requested_at): the set node runs first.
    after = await resume(rt, bob, "run-after-migration")
    await settle(rt, bob)
    assert after.node == "ask_plan"
    assert (await answer(db, rt, campaign_name, BOB, "Basic")).status.value == "completed"
    assert fake.texts_to(BOB)[-1] == "Welcome on board, Bob: you're on Basic."

    v2 = {n.node: n for n in (await campaign_funnel(db, campaign_name)).nodes}
    assert (v2["tag"].reached, v2["tag"].completed, v2["done"].reached) == (2, 2, 2)
    v1 = {n.node: n for n in (await campaign_funnel(db, campaign_name, version=1)).nodes}
    # Migrated away: reached on v1, neither completed nor dropped off there.
    assert (v1["ask_plan"].reached, v1["ask_plan"].completed, v1["ask_plan"].dropped_off) == (
        1,
        0,
        0,
    )


async def test_a_node_without_a_mapping_refuses_the_whole_migration_and_changes_nothing(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
) -> None:
    ana = await _ana_waits_for_her_email(db, rt, campaign_name)
    bob = await start(db, rt, campaign_name, BOB)  # at ask_name: v2 has it, it would move
    await suspend(rt, bob)
    await install(db, V2)
    before = [await _state(db, ana), await _state(db, bob)]

    with pytest.raises(MigrationRefused) as refused:
        await migrate(db, campaign_name, 2)
    assert [(u.conversation_id, u.node) for u in refused.value.unmapped] == [(ana, "ask_email")]
    assert f"conversation {ana} at 'ask_email'" in str(refused.value)

    with pytest.raises(MigrationRefused, match="no node 'nope' in v2"):
        await migrate(db, campaign_name, 2, {"ask_email": "nope"})
    with pytest.raises(MigrationRefused, match="--map ask_plan"):
        await migrate(db, campaign_name, 2, {"ask_email": "ask_work_email", "ask_plan": "typo"})
    assert [await _state(db, ana), await _state(db, bob)] == before

    with pytest.raises(NotFound, match="has no version 5"):
        await migrate(db, campaign_name, 5)
    with pytest.raises(NotFound, match="does not exist"):
        await migrate(db, "no-such-campaign", 1)


# --- CLI and REST ------------------------------------------------------------------------------


async def test_cli_migrate_refuses_with_exit_2_then_moves_with_a_map(
    cli_db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
) -> None:
    ana = await _ana_waits_for_her_email(cli_db, rt, campaign_name)
    await install(cli_db, V2)

    def cli(*args: str) -> Any:
        return asyncio.to_thread(runner.invoke, app, ["campaign", "migrate", *args])

    refused = await cli(campaign_name, "--to", "2")
    assert refused.exit_code == 2, refused.output
    assert f"conversation {ana}" in refused.output and "ask_email" in refused.output
    as_json = await cli(campaign_name, "--to", "2", "--json")
    assert as_json.exit_code == 2
    assert json.loads(as_json.output)["unmapped"][0]["conversation_id"] == ana
    assert (await cli(campaign_name, "--to", "2", "--map", "ask_email")).exit_code == 1
    assert (await cli(campaign_name, "--to", "9")).exit_code == 1

    moved = await cli(campaign_name, "--to", "2", "--map", "ask_email=ask_work_email")
    assert moved.exit_code == 0, moved.output
    assert "1 waiting conversations moved to v2" in moved.output
    assert "ask_email -> ask_work_email" in moved.output

    shown = await asyncio.to_thread(runner.invoke, app, ["conversations", "show", str(ana)])
    assert shown.exit_code == 0, shown.output
    assert "migrated" in shown.output and "ask_work_email" in shown.output

    again = await cli(campaign_name, "--to", "2", "--json")  # nothing left to move
    assert again.exit_code == 0 and json.loads(again.output)["moved"] == []


def _api(db: Database) -> httpx.AsyncClient:
    return operator_api(db, campaign_routes.router, api_key=API_KEY)


async def test_rest_migrate(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
) -> None:
    ana = await _ana_waits_for_her_email(db, rt, campaign_name)
    await install(db, V2)
    url = f"/api/campaigns/{campaign_name}/migrate"
    async with _api(db) as api:
        refused = await api.post(url, json={"to": 2})
        assert refused.status_code == 409, refused.text
        assert refused.json()["unmapped"] == [
            {"conversation_id": ana, "node": "ask_email", "reason": "no node 'ask_email' in v2"}
        ]
        assert (await api.post(url, json={"to": 4})).status_code == 404
        assert (await api.post("/api/campaigns/nope/migrate", json={"to": 1})).status_code == 404
        moved = await api.post(url, json={"to": 2, "map": {"ask_email": "ask_work_email"}})
        assert moved.status_code == 200, moved.text
        assert moved.json()["moved"][0]["to_node"] == "ask_work_email"


async def test_an_operator_publishes_v2_over_rest_migrates_and_the_conversation_finishes_on_it(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
) -> None:
    """The whole operator's move, as published resources: publish the edited file, read it
    back, migrate the waiting conversation, and its next answer walks the new graph."""
    ana = await _ana_waits_for_her_email(db, rt, campaign_name)
    async with _api(db) as api:
        published = await api.post("/api/campaigns", content=V2.read_text())
        shown = await api.get(f"/api/campaigns/{campaign_name}")
        moved = await api.post(
            f"/api/campaigns/{campaign_name}/migrate",
            json={"to": published.json()["version"], "map": {"ask_email": "ask_work_email"}},
        )
    assert (published.status_code, published.json()["version"]) == (201, 2)
    assert [v["version"] for v in shown.json()["versions"]] == [1, 2]
    assert moved.status_code == 200, moved.text

    await resume(rt, ana, "run-after-publishing")
    at_plan = await answer(db, rt, campaign_name, ANA, "ana@example.com")
    assert at_plan.node == "ask_plan"
    done = await answer(db, rt, campaign_name, ANA, "Pro")
    assert done.status.value == "completed"
    assert (await views.show_conversation(db, ana))["campaign_version"] == 2
