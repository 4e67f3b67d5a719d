"""Operators keep the do-not-contact list with ``parley suppress add|remove|list|import`` and
the same over REST: idempotent adds, a CSV whose bad row is reported while the others are
stored, an import that adds nothing the second time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from parley import suppression
from parley.cli import app
from parley.db import Database
from parley.db.models import Identity
from tests.operator_api import operator_api
from webhook.routes import suppressions as suppressions_routes

runner = CliRunner()


async def _cli(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(runner.invoke, app, ["suppress", *args])
    return result.exit_code, result.output


async def _seat(db: Database) -> int:
    async with db.transaction() as session:
        seat = Identity(channel="email", address="seat@example.com")
        session.add(seat)
        await session.flush()
        return seat.id


async def test_cli_add_twice_list_and_remove(cli_db: Database) -> None:
    seat = await _seat(cli_db)
    code, out = await _cli("add", "Ana@Example.com", "--reason", "unsubscribed", "--note", "asked")
    assert code == 0 and "suppressed ana@example.com installation-wide" in out
    code, out = await _cli("add", "ana@example.com", "--reason", "manual")
    assert code == 0 and "already suppressed" in out and "unsubscribed" in out
    code, _ = await _cli("add", "+34 600 111 222", "--reason", "manual", "--identity", str(seat))
    assert code == 0
    code, out = await _cli("list", "--json")
    listed = json.loads(out)
    assert [(e["address"], e["identity_id"], e["created_by"]) for e in listed] == [
        ("ana@example.com", None, "cli"),
        ("+34600111222", seat, "cli"),
    ]
    code, out = await _cli("remove", "ANA@example.com")
    assert code == 0 and "may be contacted again" in out
    code, out = await _cli("remove", "ana@example.com")
    assert code == 1 and "not suppressed" in out


async def test_cli_refuses_an_unknown_reason_or_a_non_address(cli_db: Database) -> None:
    code, out = await _cli("add", "ana@example.com", "--reason", "rude")
    assert code == 1 and "unknown reason" in out
    code, out = await _cli("add", "somebody", "--reason", "manual")
    assert code == 1 and "is not an email address, a phone number or a LinkedIn" in out
    code, out = await _cli("add", "ana@example.com", "--identity", "999")
    assert code == 1 and "identity 999 does not exist" in out
    async with cli_db.read() as session:
        assert await suppression.list_suppressions(session) == []


async def test_cli_import_reports_the_bad_row_stores_the_others_and_is_idempotent(
    cli_db: Database, tmp_path: Path
) -> None:
    seat = await _seat(cli_db)
    csv_file = tmp_path / "dnc.csv"
    csv_file.write_text(
        "address,reason,identity,note\n"
        "ana@example.com,unsubscribed,,from the old CRM\n"
        "not an address,manual,,\n"
        f"https://www.linkedin.com/in/bob,replied: not interested,{seat},\n"
        "carla@example.com,,999,\n"
        "+44 20 7946 0000,,,\n"
    )
    code, out = await _cli("import", str(csv_file), "--json")
    assert code == 1  # a row was refused: the operator must look
    report = json.loads(out[: out.rindex("]") + 1])
    assert [(r["line"], r["result"].split(":")[0]) for r in report] == [
        (2, "added"),
        (3, "invalid"),
        (4, "added"),
        (5, "invalid"),
        (6, "added"),
    ]
    assert "identity 999 does not exist" in report[3]["result"]
    async with cli_db.read() as session:
        stored = await suppression.list_suppressions(session)
    assert sorted((s.address, s.reason) for s in stored) == [
        ("+442079460000", "manual"),
        ("ana@example.com", "unsubscribed"),
        ("https://www.linkedin.com/in/bob", "replied: not interested"),
    ]
    code, out = await _cli("import", str(csv_file))
    assert "0 added, 3 already there, 2 invalid" in out
    async with cli_db.read() as session:
        assert len(await suppression.list_suppressions(session)) == 3


async def test_cli_import_refuses_a_csv_without_an_address_column(
    cli_db: Database, tmp_path: Path
) -> None:
    csv_file = tmp_path / "dnc.csv"
    csv_file.write_text("email,why\nana@example.com,manual\n")
    code, out = await _cli("import", str(csv_file))
    assert code == 1 and "address column" in out


async def test_rest_add_list_delete_and_import(db: Database) -> None:
    seat = await _seat(db)
    async with operator_api(db, suppressions_routes.router) as client:
        created = await client.post(
            "/api/suppressions", json={"address": "Ana@Example.com", "reason": "complained"}
        )
        assert created.status_code == 201 and created.json()["address"] == "ana@example.com"
        again = await client.post("/api/suppressions", json={"address": "ana@example.com"})
        assert again.status_code == 200 and again.json()["reason"] == "complained"
        bad = await client.post(
            "/api/suppressions", json={"address": "ana@example.com", "reason": "rude"}
        )
        assert bad.status_code == 422
        not_an_address = await client.post("/api/suppressions", json={"address": "nobody"})
        assert not_an_address.status_code == 422 and "not an email" in not_an_address.text
        imported = await client.post(
            "/api/suppressions/import",
            content=f"address,identity\n+34600111222,{seat}\nnope,\n".encode(),
            headers={"Content-Type": "text/csv"},
        )
        assert imported.status_code == 200
        assert (imported.json()["added"], imported.json()["invalid"]) == (1, 1)
        listed = await client.get("/api/suppressions", params={"identity_id": seat})
        assert [e["address"] for e in listed.json()] == ["ana@example.com", "+34600111222"]
        removed = await client.delete("/api/suppressions", params={"address": "ANA@example.com"})
        assert removed.status_code == 200
        gone = await client.delete("/api/suppressions", params={"address": "ana@example.com"})
        assert gone.status_code == 404
        headerless = await client.post(
            "/api/suppressions/import", content=b"foo\nbar\n", headers={"Content-Type": "text/csv"}
        )
        assert headerless.status_code == 422
