"""An operator publishes a campaign (a draft unless ``--activate`` / ``?activate=true``),
activates and archives it with the CLI and the REST API, and reads its status in ``list`` and
``show``; an archived campaign's start is refused (409 over REST). On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from parley.cli import app
from parley.db import Database, queries
from tests.operations.driving import ROOT
from tests.operator_api import operator_api
from webhook.routes import api as api_routes
from webhook.routes import campaigns as campaign_routes

FOLLOW_UP = ROOT / "examples/campaigns/follow_up.yaml"
runner = CliRunner()


def _sequence(name: str) -> str:
    """A LinkedIn-free campaign of outreach actions (an email), named ``name``."""
    return f"""
name: {name}
channel: email
inputs: [first_name]
start: mail
nodes:
  - {{id: mail, type: send, action: email, subject: "Hi", text: "Hello {{first_name}}"}}
  - {{id: done, type: end}}
edges:
  - {{from: mail, to: done}}
"""


async def test_the_cli_publishes_a_draft_activates_and_archives_it_and_prints_its_status(
    cli_db: Database, tmp_path: Path
) -> None:
    def cli(*args: str) -> Any:
        return asyncio.to_thread(runner.invoke, app, ["campaign", *args])

    path = tmp_path / "mailing.yaml"
    path.write_text(_sequence("mailing"))

    published = await cli("publish", str(path))
    assert published.exit_code == 0, published.output
    assert "draft" in published.output
    listed = await cli("list", "--json")
    assert [(c["name"], c["status"]) for c in json.loads(listed.output)] == [("mailing", "draft")]

    activated = await cli("activate", "mailing", "--json")
    assert activated.exit_code == 0, activated.output
    assert json.loads(activated.output)["status"] == "active"
    archived = await cli("archive", "mailing", "--reason", "season over")
    assert archived.exit_code == 0 and "archived" in archived.output, archived.output
    shown = await cli("show", "mailing")
    assert "archived" in shown.output and "season over" in shown.output, shown.output
    refused = await cli("resume", "mailing")
    assert refused.exit_code == 1 and "archived, not paused" in refused.output

    other = tmp_path / "other.yaml"
    other.write_text(_sequence("other"))
    at_once = await cli("publish", str(other), "--activate", "--json")
    assert at_once.exit_code == 0, at_once.output
    assert json.loads(at_once.output)["status"] == "active"
    unknown = await cli("activate", "no-such-campaign")
    assert unknown.exit_code == 1 and "does not exist" in unknown.output


async def test_the_rest_api_publishes_a_draft_activates_archives_and_refuses_a_start(
    db: Database,
) -> None:
    async with db.transaction() as session:
        identity = await queries.identities.ensure_identity(session, "email", "me@example.com")
    lead = {
        "campaign": "mailing",
        "identity_id": identity.id,
        "channel": "email",
        "address": "lead@example.com",
        "variables": {"first_name": "Ada"},
    }
    async with operator_api(db, campaign_routes.router, api_routes.router) as api:
        draft = await api.post("/api/campaigns", content=_sequence("mailing"))
        active = await api.post("/api/campaigns?activate=true", content=_sequence("other"))
        activated = await api.post("/api/campaigns/mailing/activate")
        archived = await api.post("/api/campaigns/mailing/archive", json={"reason": "done"})
        start = await api.post("/api/conversations", json=lead)
        again = await api.post("/api/campaigns/mailing/archive")
        pause_archived = await api.post("/api/campaigns/mailing/pause")
        shown = await api.get("/api/campaigns/mailing")

    assert (draft.status_code, draft.json()["status"]) == (201, "draft")
    assert active.json()["status"] == "active"
    assert (activated.status_code, activated.json()["status"]) == (200, "active")
    assert (archived.status_code, archived.json()["status"]) == (200, "archived")
    assert start.status_code == 409 and "accepts no new conversations" in start.json()["detail"]
    assert again.status_code == 200  # archiving an archived campaign changes nothing
    assert pause_archived.status_code == 409
    assert (shown.json()["status"], shown.json()["status_reason"]) == ("archived", "done")
