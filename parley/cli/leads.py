"""``parley leads import|show``: leads in bulk from a CSV or JSONL file (the same as
``POST /api/conversations/bulk`` and ``GET /api/imports/{id}``)."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from parley.cli.common import (
    EXIT_REFUSED,
    AsJson,
    console,
    database,
    err_console,
    print_json,
    run_with_db,
)
from parley.conversation import lead_import
from parley.conversation.lead_rows import read_file
from parley.errors import ParleyError

leads_app = typer.Typer(help="Leads in bulk: import a file, read an import's report.")

ReportPath = Annotated[
    Path | None,
    typer.Option("--report", help="Write the per-row report as CSV to this path."),
]


@leads_app.command("import")
def leads_import(
    path: Annotated[Path, typer.Argument(help="A .csv or .jsonl file, one lead a row.")],
    campaign: Annotated[str, typer.Option(help="The campaign's name.")],
    identity: Annotated[int, typer.Option(help="The sender identity's id.")],
    report: ReportPath = None,
    as_json: AsJson = False,
) -> None:
    """Check every row, then create the leads' conversations in batches; the dispatcher starts
    their runs at PARLEY_RUN_STARTS_PER_SECOND. The same file again starts nothing new; an
    interrupted import is finished by importing the same file again."""
    try:
        rows = read_file(path)
    except ParleyError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_REFUSED) from exc
    view = asyncio.run(_import_with_progress(rows, campaign, identity, str(path), as_json))
    if report is not None:
        write_report(report, view["rows"])
    if as_json:
        print_json(view)
        return
    _print_summary(view)
    if report is not None:
        console.print(f"report: {report}")


async def _import_with_progress(
    rows: list[dict[str, Any]], campaign: str, identity: int, source: str, quiet: bool
) -> dict[str, Any]:
    db = database()
    try:
        prepared = await lead_import.prepare(db, campaign, identity, rows, source=source)
        with Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=quiet,
            transient=False,
        ) as bar:
            done = prepared.total - (
                await lead_import.progress(db, prepared.import_id, with_rows=False)
            )["counts"].get("pending", 0)
            task = bar.add_task("import", total=prepared.total, completed=done)
            await lead_import.run(db, prepared.import_id, on_batch=lambda n: bar.advance(task, n))
        view = await lead_import.progress(db, prepared.import_id)
        view["resumed"] = prepared.resumed
        return view
    except ParleyError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_REFUSED) from exc
    finally:
        await db.dispose()


@leads_app.command("show")
def leads_show(
    import_id: Annotated[int, typer.Argument(help="The import's id.")],
    report: ReportPath = None,
    as_json: AsJson = False,
) -> None:
    """An import's progress (rows per outcome, runs started) and, with --report, its rows."""
    view = run_with_db(lambda db: lead_import.progress(db, import_id))
    if report is not None:
        write_report(report, view["rows"])
    if as_json:
        print_json(view)
        return
    _print_summary(view)


def write_report(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(lead_import.REPORT_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key) for key in lead_import.REPORT_COLUMNS})


def _print_summary(view: dict[str, Any]) -> None:
    resumed = " (an interrupted import of this content, finished)" if view.get("resumed") else ""
    console.print(
        f"import {view['id']}: {view['total']} row(s) into [bold]{view['campaign']}[/] for "
        f"identity {view['identity_id']}, {view['status']}{resumed}"
    )
    by_outcome: dict[str, int] = {}
    for row in view.get("rows", []):
        by_outcome[row["outcome"]] = by_outcome.get(row["outcome"], 0) + 1
    table = Table("outcome", "rows")
    for outcome, n in sorted(by_outcome.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(outcome, str(n))
    console.print(table)
    console.print(
        f"runs started so far: {view['runs_started']} (the dispatcher starts the rest, paced)"
    )
