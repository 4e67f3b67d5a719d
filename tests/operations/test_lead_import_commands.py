"""Leads in bulk from the operator's side, on SQLite and PostgreSQL: ``parley leads import``
with a CSV prints a summary and writes the per-row report; ``POST /api/conversations/bulk``
answers 202 with an import id whose progress and report ``GET /api/imports/{id}`` gives; a
body that is not rows is refused with 422 and stores nothing."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from parley.campaign.registry import install_campaign
from parley.cli import app
from parley.db import Database
from parley.db.models import Conversation, Identity, LeadImport
from tests.operator_api import operator_api
from webhook.routes import lead_imports

SEQUENCE = """
name: li-import
channel: linkedin
inputs: [first_name]
start: connect
nodes:
  - {id: connect, type: send, action: linkedin_connection, text: "Hi {first_name}"}
  - {id: done, type: end}
edges:
  - {from: connect, to: done}
"""
CSV = (
    "linkedin,email,name,first_name\n"
    "https://linkedin.com/in/ana,ana@example.com,Ana,Ana\n"
    "https://linkedin.com/in/bob,not-an-email,Bob,Bob\n"
    "https://linkedin.com/in/cy,cy@example.com,Cy,Cy\n"
)
runner = CliRunner()


@pytest.fixture
async def campaign(db: Database, tmp_path: Path) -> str:
    path = tmp_path / "sequence.yaml"
    path.write_text(SEQUENCE)
    async with db.transaction() as session:
        return (await install_campaign(session, path)).name


@pytest.fixture
async def identity(db: Database) -> int:
    async with db.transaction() as session:
        seat = Identity(channel="linkedin", address="seat-1", timezone="UTC")
        session.add(seat)
        await session.flush()
        return seat.id


async def _count(db: Database, model: Any) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_the_cli_imports_a_csv_prints_a_summary_and_writes_the_report(
    cli_db: Database, campaign: str, identity: int, tmp_path: Path
) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text(CSV)
    report = tmp_path / "leads.report.csv"

    def cli(*args: str) -> Any:
        return asyncio.to_thread(runner.invoke, app, ["leads", *args])

    done = await cli(
        "import", str(leads), "--campaign", campaign, "--identity", str(identity),
        "--report", str(report),
    )  # fmt: skip

    assert done.exit_code == 0, done.output
    assert "started" in done.output and "invalid: malformed email" in done.output
    with report.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["outcome"].split(":")[0] for r in rows] == ["started", "invalid", "started"]
    assert rows[0]["address"] == "https://linkedin.com/in/ana"
    assert await _count(cli_db, Conversation) == 2

    again = await cli(
        "import", str(leads), "--campaign", campaign, "--identity", str(identity), "--json"
    )
    assert again.exit_code == 0, again.output
    view = json.loads(again.output)
    assert view["counts"] == {"skipped": 2, "invalid": 1}
    assert await _count(cli_db, Conversation) == 2

    unknown = await cli("import", str(leads), "--campaign", "nope", "--identity", str(identity))
    assert unknown.exit_code == 1
    assert "nope" in unknown.output


async def test_a_file_that_is_neither_csv_nor_jsonl_is_refused(
    cli_db: Database, campaign: str, identity: int, tmp_path: Path
) -> None:
    leads = tmp_path / "leads.xlsx"
    leads.write_text("whatever")

    refused = await asyncio.to_thread(
        runner.invoke,
        app,
        ["leads", "import", str(leads), "--campaign", campaign, "--identity", str(identity)],
    )

    assert refused.exit_code == 1
    assert "expected a .csv or .jsonl file" in refused.output
    assert await _count(cli_db, LeadImport) == 0


async def _finished(api: Any, import_id: int) -> dict[str, Any]:
    for _ in range(200):
        view = (await api.get(f"/api/imports/{import_id}")).json()
        if view["status"] == "done":
            return dict(view)
        await asyncio.sleep(0.05)
    raise AssertionError(f"import {import_id} never finished: {view}")


async def test_rest_answers_202_with_an_import_whose_progress_and_report_can_be_read(
    db: Database, campaign: str, identity: int
) -> None:
    rows = [
        {"linkedin": "https://linkedin.com/in/ana", "variables": {"first_name": "Ana"}},
        {"linkedin": "https://linkedin.com/in/bob"},
    ]
    async with operator_api(db, lead_imports.router) as api:
        answer = await api.post(
            "/api/conversations/bulk",
            json={"campaign": campaign, "identity_id": identity, "rows": rows},
        )
        assert answer.status_code == 202, answer.text
        view = await _finished(api, answer.json()["import_id"])

        uploaded = await api.post(
            "/api/conversations/bulk",
            params={"campaign": campaign, "identity_id": identity},
            content=CSV.encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert uploaded.status_code == 202, uploaded.text
        upload_view = await _finished(api, uploaded.json()["import_id"])

    assert view["counts"] == {"started": 1, "invalid": 1}
    assert [r["outcome"] for r in view["rows"]] == [
        "started",
        "invalid: missing campaign input(s): first_name",
    ]
    assert upload_view["counts"] == {"skipped": 1, "started": 1, "invalid": 1}
    assert await _count(db, Conversation) == 2


async def test_rest_refuses_a_body_that_is_not_rows_and_an_unknown_campaign(
    db: Database, campaign: str, identity: int
) -> None:
    async with operator_api(db, lead_imports.router) as api:
        not_rows = await api.post("/api/conversations/bulk", json={"rows": "nope"})
        no_params = await api.post(
            "/api/conversations/bulk", content=CSV.encode(), headers={"Content-Type": "text/csv"}
        )
        unknown = await api.post(
            "/api/conversations/bulk",
            json={"campaign": "nope", "identity_id": identity, "rows": []},
        )
        missing = await api.get("/api/imports/999")

    assert (not_rows.status_code, no_params.status_code) == (422, 422)
    assert unknown.status_code == 404 and "nope" in unknown.text
    assert missing.status_code == 404
    assert await _count(db, LeadImport) == 0
