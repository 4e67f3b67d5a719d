"""Campaigns as a published, versioned resource (issue 18, first part), on SQLite and
PostgreSQL: an operator publishes their own file, publishing the same content again is the same
version, a changed file is the next version, a broken file is refused with every problem by
node id and stores nothing; the CLI and the REST API list and show the same, and a version's
exact text comes back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from parley.campaign import publishing
from parley.cli import app
from parley.conversation import lifecycle
from parley.db import Database
from parley.errors import CampaignInvalid, NotFound
from tests.operations.driving import ROOT
from tests.operator_api import operator_api
from webhook.routes import campaigns as campaign_routes

FOLLOW_UP = ROOT / "examples/campaigns/follow_up.yaml"
runner = CliRunner()


def _edited(source: str) -> str:
    """The same campaign with one prompt's wording changed: new content, so a new version."""
    first_text = source.index("text:")
    return source[:first_text] + "text: 'A new wording'\n      # was:" + source[first_text + 5 :]


def _broken(source: str) -> str:
    """An edge to a node that does not exist."""
    return source.replace("edges:", "edges:\n  - {from: nowhere_a, to: nowhere_b}", 1)


async def test_publishing_the_same_file_twice_is_one_version_and_an_edit_is_the_next(
    db: Database,
) -> None:
    source = FOLLOW_UP.read_text()

    first = await publishing.publish(db, source)
    again = await publishing.publish(db, "# a comment changes nothing\n" + source)
    edited = await publishing.publish(db, _edited(source))

    assert (first.version, first.created) == (1, True)
    assert (again.version, again.created, again.digest) == (1, False, first.digest)
    assert (edited.version, edited.created) == (2, True)
    assert edited.digest != first.digest
    assert await publishing.campaign_source(db, first.name, 1) == source  # the exact text


async def test_a_broken_campaign_is_refused_with_its_problems_and_stores_nothing(
    db: Database,
) -> None:
    with pytest.raises(CampaignInvalid) as refused:
        await publishing.publish(db, _broken(FOLLOW_UP.read_text()))

    assert any("nowhere" in message for _node, message in refused.value.problems)
    assert await publishing.list_campaigns(db) == []


async def test_two_operators_publishing_new_content_at_once_get_two_versions(
    db: Database,
) -> None:
    source = FOLLOW_UP.read_text()
    await publishing.publish(db, source)

    results = await asyncio.gather(
        publishing.publish(db, _edited(source)),
        publishing.publish(db, _edited(source).replace("A new wording", "Another wording")),
    )

    assert sorted(r.version for r in results) == [2, 3]
    assert all(r.created for r in results)


async def test_list_and_show_say_what_is_published_and_which_campaign_is_paused(
    db: Database,
) -> None:
    source = FOLLOW_UP.read_text()
    name = (await publishing.publish(db, source)).name
    await publishing.publish(db, _edited(source))
    await lifecycle.activate_campaign(db, name)  # a new campaign is a draft
    await lifecycle.pause_campaign(db, name, "holiday")

    [summary] = await publishing.list_campaigns(db)
    shown = await publishing.show_campaign(db, name)
    first = await publishing.show_campaign(db, name, 1)

    assert (summary.name, summary.latest_version, summary.versions) == (name, 2, 2)
    assert summary.paused and summary.status == "paused"
    assert (shown["version"], shown["paused"], shown["status"]) == (2, True, "paused")
    assert shown["status_reason"] == "holiday"
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["nodes"] and all({"id", "type"} <= set(n) for n in shown["nodes"])
    assert first["digest"] != shown["digest"]
    with pytest.raises(NotFound, match="no version 7"):
        await publishing.show_campaign(db, name, 7)
    with pytest.raises(NotFound):
        await publishing.show_campaign(db, "no-such-campaign")


async def test_the_rest_api_publishes_lists_shows_and_returns_the_exact_yaml(
    db: Database,
) -> None:
    source = FOLLOW_UP.read_text()
    async with operator_api(db, campaign_routes.router) as api:
        created = await api.post("/api/campaigns", content=source)
        again = await api.post("/api/campaigns", content=source)
        broken = await api.post("/api/campaigns", content=_broken(source))
        not_text = await api.post("/api/campaigns", content=b"\xff\xfe")
        name = created.json()["name"]
        listed = await api.get("/api/campaigns")
        shown = await api.get(f"/api/campaigns/{name}")
        exact = await api.get(f"/api/campaigns/{name}/versions/1")
        missing = await api.get(f"/api/campaigns/{name}/versions/9")
        unknown = await api.get("/api/campaigns/nope")
        unauthorised = await api.get("/api/campaigns", headers={"Authorization": "Bearer no"})

    assert (created.status_code, created.json()["version"]) == (201, 1)
    assert (again.status_code, again.json()["created"]) == (200, False)
    assert broken.status_code == 422
    assert any("nowhere" in p["message"] for p in broken.json()["problems"])
    assert not_text.status_code == 422
    assert [c["name"] for c in listed.json()] == [name]
    assert shown.json()["version"] == 1
    assert exact.status_code == 200 and exact.text == source
    assert exact.headers["content-type"].startswith("application/yaml")
    assert missing.status_code == 404 and unknown.status_code == 404
    assert unauthorised.status_code == 401


async def test_the_cli_publishes_a_file_lists_and_shows_it(
    cli_db: Database, tmp_path: Path
) -> None:
    def cli(*args: str) -> Any:
        return asyncio.to_thread(runner.invoke, app, ["campaign", *args])

    broken = tmp_path / "broken.yaml"
    broken.write_text(_broken(FOLLOW_UP.read_text()))
    refused = await cli("publish", str(broken))
    assert refused.exit_code == 2, refused.output
    assert "nowhere" in refused.output

    published = await cli("publish", str(FOLLOW_UP))
    assert published.exit_code == 0, published.output
    assert "published" in published.output and "v1" in published.output
    again = await cli("publish", str(FOLLOW_UP), "--json")
    assert json.loads(again.output)["created"] is False
    name = json.loads(again.output)["name"]

    listed = await cli("list", "--json")
    assert [c["name"] for c in json.loads(listed.output)] == [name]
    shown = await cli("show", name)
    assert shown.exit_code == 0 and f"{name}" in shown.output and "v1" in shown.output
    as_yaml = await cli("show", name, "--version", "1", "--yaml")
    assert as_yaml.output == FOLLOW_UP.read_text()
    unknown = await cli("show", name, "--version", "4")
    assert unknown.exit_code == 1 and "no version 4" in unknown.output
    missing_file = await cli("publish", str(tmp_path / "nope.yaml"))
    assert missing_file.exit_code == 2
