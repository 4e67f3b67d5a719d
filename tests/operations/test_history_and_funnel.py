"""What operators see, on SQLite and PostgreSQL: a conversation's step history and current
wait, a campaign's funnel (counts per node, time in node), the Prefect UI's markdown page
(bounded, contact masked), and the CLI and REST surfaces of both."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import prefect_adapter.artifacts as artifacts
import tasks.conversation as conversation_tasks
from parley.cli import app
from parley.conversation import executor, lifecycle
from parley.conversation import operator_views as views
from parley.conversation.funnel import NodeFunnel, campaign_funnel, percentile
from parley.db import Database
from parley.errors import NotFound
from parley.runtime import Runtime
from tests.operations.driving import SetClock, answer, on_clock, say, start, suspend
from tests.operator_api import operator_api
from tests.storage.conftest import (  # noqa: F401  (fixtures)
    campaign_name,
    crm,
    fake,
    runtime,
)
from webhook.routes import campaigns as campaign_routes

ANA, BOB, CY, DEE = "34600000001", "34600000002", "34600000003", "34600000004"
API_KEY = "operator-key-for-tests-0123456789"
runner = CliRunner()


@pytest.fixture
def clock() -> SetClock:
    return SetClock()


@pytest.fixture
def rt(runtime: Runtime, clock: SetClock) -> Runtime:  # noqa: F811
    return on_clock(runtime, clock)


async def _four_journeys(
    db: Database, rt: Runtime, campaign: str, clock: SetClock
) -> dict[str, int]:
    """Ana completes; Bob's ask_email fails for good; Cy is cancelled at ask_email; Dee still
    waits at ask_name. They answer their name after 60, 120 and 180 s."""
    ids = {phone: await start(db, rt, campaign, phone) for phone in (ANA, BOB, CY, DEE)}
    for phone in (ANA, BOB, CY):
        clock.advance(seconds=60)
        await answer(db, rt, campaign, phone, "Contact")
    clock.advance(seconds=30)
    await answer(db, rt, campaign, ANA, "ana@example.com")
    assert (await answer(db, rt, campaign, ANA, "Pro")).status.value == "completed"
    bob = await executor.current_cursor(rt, ids[BOB])
    await executor.give_up(rt, ids[BOB], bob.step, "the provider refused the prompt")
    await lifecycle.cancel(db, ids[CY], "the lead asked us to stop", clock=clock)
    await suspend(rt, ids[DEE])
    return ids


async def test_show_gives_each_visit_with_its_outcome_and_the_current_wait(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
    clock: SetClock,
) -> None:
    ids = await _four_journeys(db, rt, campaign_name, clock)

    ana = await views.show_conversation(db, ids[ANA])
    assert [(v["node"], v["outcome"], v["next_node"]) for v in ana["history"]] == [
        ("ask_name", "left", "ask_email"),
        ("ask_email", "left", "ask_plan"),
        ("ask_plan", "left", "register"),
        ("register", "left", "confirm"),
        ("confirm", "left", "done"),
        ("done", "completed", None),
    ]
    first = ana["history"][0]
    stay = datetime.fromisoformat(first["left_at"]) - datetime.fromisoformat(first["entered_at"])
    assert stay == timedelta(seconds=60)
    assert ana["wait"] is None and ana["paused_by"] is None

    bob = await views.show_conversation(db, ids[BOB])
    assert bob["status"] == "failed"
    last = bob["history"][-1]
    assert (last["node"], last["outcome"]) == ("ask_email", "failed")
    assert "provider refused" in last["error"]

    cy = (await views.show_conversation(db, ids[CY]))["history"][-1]
    assert (cy["node"], cy["outcome"], cy["error"]) == (
        "ask_email",
        "cancelled",
        "the lead asked us to stop",
    )

    dee = await views.show_conversation(db, ids[DEE])
    assert dee["status"] == "suspended"
    assert dee["wait"] == {"kind": "reply", "until": None}
    assert [(v["node"], v["outcome"], v["left_at"]) for v in dee["history"]] == [
        ("ask_name", None, None)
    ]
    await lifecycle.pause(db, ids[DEE])
    paused = await views.show_conversation(db, ids[DEE])
    assert (paused["wait"], paused["paused_by"]) == (
        {"kind": "operator", "until": None},
        "operator",
    )


async def test_the_funnel_counts_reached_waiting_dropped_and_completed_per_node(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
    clock: SetClock,
) -> None:
    await _four_journeys(db, rt, campaign_name, clock)
    funnel = await campaign_funnel(db, campaign_name)
    assert (funnel.campaign, funnel.version) == ("onboarding", 1)
    by_node = {n.node: n for n in funnel.nodes}
    assert list(by_node) == [
        "ask_name",
        "ask_email",
        "email_unreadable",
        "ask_plan",
        "register",
        "confirm",
        "done",
    ]

    def counts(node: NodeFunnel) -> tuple[int, int, int, int]:
        return node.reached, node.waiting_now, node.dropped_off, node.completed

    assert counts(by_node["ask_name"]) == (4, 1, 0, 3)
    assert counts(by_node["ask_email"]) == (3, 0, 2, 1)
    assert counts(by_node["email_unreadable"]) == (0, 0, 0, 0)
    assert counts(by_node["ask_plan"]) == (1, 0, 0, 1)
    assert counts(by_node["done"]) == (1, 0, 0, 1)
    # ask_name was left after 60, 120 and 180 s; Dee's open visit does not count yet.
    assert (by_node["ask_name"].p50_seconds, by_node["ask_name"].p95_seconds) == (120.0, 174.0)
    assert by_node["email_unreadable"].p50_seconds is None
    assert by_node["ask_name"].type == "ask" and by_node["register"].type == "http"


async def test_a_funnel_of_an_unknown_campaign_or_version_is_refused(
    db: Database,
    campaign_name: str,  # noqa: F811
) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        await campaign_funnel(db, "no-such-campaign")
    with pytest.raises(NotFound, match="has no version 7"):
        await campaign_funnel(db, campaign_name, version=7)


def test_percentiles_interpolate_like_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


# --- the markdown page in the Prefect UI -------------------------------------------------------


async def test_the_artifact_shows_the_latest_messages_and_steps_with_the_contact_masked(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
) -> None:
    cid = await start(db, rt, campaign_name, DEE)
    for n in range(60):  # a chatty contact: unread messages pile up while it waits
        await say(db, campaign_name, DEE, f"line {n} | with a pipe\nand a second line")
    detail = await views.show_conversation(db, cid, last_messages=views.ARTIFACT_MESSAGES)
    assert len(detail["messages"]) == 50 and detail["messages_total"] > 60
    page = views.conversation_markdown(detail)

    assert DEE not in page and views.mask_address(DEE) in page
    assert f"*{detail['messages_total'] - 50} earlier messages not shown.*" in page
    assert "> line 59 | with a pipe\n> and a second line" in page  # as written, quoted
    assert "line 0 |" not in page
    assert "## Step history" in page and "| `ask_name` |" in page
    assert f"- **status:** {detail['status']}" in page


def test_the_artifact_page_stays_bounded_however_long_the_history() -> None:
    detail = {
        "id": 7,
        "status": "suspended",
        "paused_by": None,
        "campaign": "c",
        "campaign_version": 2,
        "current_node": "n",
        "step": 9000,
        "wait": {"kind": "timer", "until": "2031-03-04T09:00:00+00:00"},
        "channel": "whatsapp",
        "contact": "34600000009",
        "last_error": "boom | twice\nover lines",
        "messages": [
            {
                "direction": "out",
                "text": f"m{i}",
                "type": "text",
                "status": "read",
                "created_at": "t",
            }
            for i in range(2000)
        ],
        "messages_total": 2000,
        "history": [
            {
                "node": "n",
                "entered_at": "a",
                "left_at": "b",
                "outcome": "left",
                "next_node": "n",
                "attempts": 0,
                "error": None,
            }
        ]
        * 300,
    }
    page = views.conversation_markdown(detail)
    assert page.count("**bot**") == 50 and page.count("| `n` |") == 50
    assert "*1950 earlier messages not shown.*" in page and "*250 earlier steps" in page
    assert "timer until 2031-03-04T09:00:00+00:00" in page
    assert "boom \\| twice over lines" in page
    assert len(page) < 10_000


async def test_publishing_the_artifact_keys_it_by_conversation(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cid = await start(db, rt, campaign_name, ANA)
    created: list[dict[str, Any]] = []

    async def fake_create(**kwargs: Any) -> str:
        created.append(kwargs)
        return "artifact-id"

    async def the_runtime() -> Runtime:
        return rt

    monkeypatch.setattr(artifacts, "acreate_markdown_artifact", fake_create)
    monkeypatch.setattr(artifacts, "get_runtime", the_runtime)
    await artifacts.publish_conversation_artifact(cid)
    assert created[0]["key"] == f"conversation-{cid}"
    assert "# Conversation" in created[0]["markdown"] and ANA not in created[0]["markdown"]
    assert "ask_name" in created[0]["description"]


async def test_a_failing_artifact_only_warns_and_the_run_still_suspends(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cid = await start(db, rt, campaign_name, ANA)
    step = (await executor.current_cursor(rt, cid)).step

    async def broken(conversation_id: int) -> None:
        raise RuntimeError("Prefect API said 500")

    async def the_runtime() -> Runtime:
        return rt

    monkeypatch.setattr(conversation_tasks, "publish_conversation_artifact", broken)
    monkeypatch.setattr(conversation_tasks, "get_runtime", the_runtime)
    monkeypatch.setattr(conversation_tasks, "get_run_logger", lambda: logging.getLogger("t"))
    with caplog.at_level(logging.WARNING, logger="t"):
        decision = await conversation_tasks.prepare_suspend.fn(cid, step)
    assert decision.suspend
    assert "artifact not updated" in caplog.text
    assert (await views.show_conversation(db, cid))["status"] == "suspended"


# --- CLI and REST ------------------------------------------------------------------------------


async def test_cli_funnel_and_show(
    cli_db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
    clock: SetClock,
) -> None:
    ids = await _four_journeys(cli_db, rt, campaign_name, clock)

    table = await asyncio.to_thread(runner.invoke, app, ["campaign", "funnel", campaign_name])
    assert table.exit_code == 0, table.output
    assert "onboarding v1" in table.output and "ask_email" in table.output
    assert "2m 0s" in table.output  # ask_name's p50

    as_json = await asyncio.to_thread(
        runner.invoke, app, ["campaign", "funnel", campaign_name, "--version", "1", "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    nodes = {n["node"]: n for n in json.loads(as_json.output)["nodes"]}
    assert (nodes["ask_email"]["reached"], nodes["ask_email"]["dropped_off"]) == (3, 2)

    unknown = await asyncio.to_thread(runner.invoke, app, ["campaign", "funnel", "nope"])
    assert unknown.exit_code == 1 and "does not exist" in unknown.output

    shown = await asyncio.to_thread(runner.invoke, app, ["conversations", "show", str(ids[BOB])])
    assert shown.exit_code == 0, shown.output
    assert "steps" in shown.output and "failed" in shown.output and "ask_email" in shown.output
    detail = json.loads(
        (
            await asyncio.to_thread(
                runner.invoke, app, ["conversations", "show", str(ids[DEE]), "--json"]
            )
        ).output
    )
    assert detail["wait"] == {"kind": "reply", "until": None}
    assert detail["history"][0]["node"] == "ask_name"


def _api(db: Database) -> httpx.AsyncClient:
    return operator_api(db, campaign_routes.router, api_key=API_KEY)


async def test_rest_funnel(
    db: Database,
    rt: Runtime,
    campaign_name: str,  # noqa: F811
    clock: SetClock,
) -> None:
    await _four_journeys(db, rt, campaign_name, clock)
    async with _api(db) as api:
        answer_ = await api.get(f"/api/campaigns/{campaign_name}/funnel", params={"version": 1})
        assert answer_.status_code == 200, answer_.text
        nodes = {n["node"]: n for n in answer_.json()["nodes"]}
        assert nodes["ask_name"]["waiting_now"] == 1 and nodes["ask_name"]["p50_seconds"] == 120
        assert (await api.get("/api/campaigns/nope/funnel")).status_code == 404
        assert (
            await api.get(f"/api/campaigns/{campaign_name}/funnel?version=9")
        ).status_code == 404
        api.headers.pop("Authorization")
        assert (await api.get(f"/api/campaigns/{campaign_name}/funnel")).status_code == 401
