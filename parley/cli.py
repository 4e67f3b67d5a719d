"""The ``parley`` command for the people who operate Parley (typer + rich)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from parley import operator_views
from parley.db import Database
from parley.db import migrate as db_migrate
from parley.errors import CampaignInvalid, NotFound
from parley.settings import get_settings
from parley.state_machine import Status

app = typer.Typer(help="Parley: durable multi-step conversations on Prefect.", no_args_is_help=True)
db_app = typer.Typer(help="Parley's own database.", no_args_is_help=True)
campaign_app = typer.Typer(help="Campaign graphs.", no_args_is_help=True)
conversations_app = typer.Typer(help="Inspect conversations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(campaign_app, name="campaign")
app.add_typer(conversations_app, name="conversations")

console = Console()
err_console = Console(stderr=True)


def _database() -> Database:
    return Database(get_settings().resolved_database_url)


async def _with_db(action: Any) -> Any:
    db = _database()
    try:
        return await action(db)
    finally:
        await db.dispose()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all Alembic migrations to PARLEY_DATABASE_URL (or the embedded SQLite file)."""
    url = get_settings().resolved_database_url
    db_migrate.upgrade(url)
    console.print(f"[green]database is at {', '.join(db_migrate.current_heads())}[/]")


@campaign_app.command("validate")
def campaign_validate(path: Path) -> None:
    """Check a campaign file; print every problem with its node id (exit 2 if any)."""
    from parley.campaign import load_campaign

    try:
        campaign = load_campaign(path)
    except CampaignInvalid as exc:
        for node, message in exc.problems:
            err_console.print(f"[red]{path}[/]: [bold]{node or '<campaign>'}[/]: {message}")
        raise typer.Exit(2) from exc
    except (OSError, NotFound) as exc:
        err_console.print(f"[red]{path}[/]: {exc}")
        raise typer.Exit(2) from exc
    console.print(
        f"[green]ok[/] {campaign.name} v{campaign.version}: "
        f"{len(campaign.nodes)} nodes, {len(campaign.edges)} edges"
    )


@conversations_app.command("list")
def conversations_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    status: Annotated[Status | None, typer.Option(help="Only this status.")] = None,
    limit: int = 100,
) -> None:
    """The newest conversations."""
    rows: list[dict[str, Any]] = asyncio.run(
        _with_db(lambda db: operator_views.list_conversations(db, limit=limit, status=status))
    )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "channel", "contact", "status", "campaign", "node", "step", "flow run")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["channel"],
            row["contact"],
            row["status"],
            f"{row['campaign']} v{row['campaign_version']}",
            row["current_node"],
            str(row["step"]),
            row["flow_run_id"] or "-",
        )
    console.print(table)


@conversations_app.command("show")
def conversations_show(
    conversation_id: int,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One conversation: its state, variables and transcript."""
    try:
        detail: dict[str, Any] = asyncio.run(
            _with_db(lambda db: operator_views.show_conversation(db, conversation_id))
        )
    except NotFound as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(detail, indent=2))
        return
    _print_detail(detail)


def _print_detail(detail: dict[str, Any]) -> None:
    console.print(
        f"[bold]conversation {detail['id']}[/] {detail['channel']} {detail['contact']} "
        f"[cyan]{detail['status']}[/] at {detail['current_node']} (step {detail['step']}), "
        f"waiting for {detail['waiting_for'] or 'nothing'}; flow run {detail['flow_run_id']}"
    )
    console.print(f"variables: {json.dumps(detail['variables'])}")
    if detail["last_error"]:
        console.print(f"[red]last error: {detail['last_error']}[/]")
    table = Table("time", "dir", "text", "status", "provider id")
    for m in detail["messages"]:
        table.add_row(
            m["created_at"],
            m["direction"],
            m["text"] or f"<{m['type']}>",
            m["status"],
            m["provider_message_id"] or "-",
        )
    console.print(table)


FakeProviders = Annotated[
    bool | None,
    typer.Option(
        "--fake-providers/--no-fake-providers",
        help="Loopback stand-ins for the WhatsApp API and the campaign's endpoints: "
        "default starts them only where nothing answers yet.",
        show_default=False,
    ),
]


@app.command()
def dev(fake_providers: FakeProviders = None) -> None:
    """Run the stack for local work: Prefect server, worker, webhook (Ctrl-C stops it)."""
    from parley.local.dev import run_dev

    raise typer.Exit(run_dev(get_settings(), fake_providers=fake_providers))


@app.command()
def chat(
    phone: Annotated[
        str | None, typer.Option(help="Your WhatsApp number (digits); random by default.")
    ] = None,
) -> None:
    """Be the contact: type messages into a running `parley dev` and read the bot's answers."""
    from parley.local.chat import run_chat

    raise typer.Exit(run_chat(get_settings(), phone))


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the stack running afterwards.")] = False,
) -> None:
    """Start the whole stack on embedded defaults and play three WhatsApp users through it."""
    from parley.local.demo import run_demo

    raise typer.Exit(run_demo(keep=keep))


def main() -> None:
    app()
