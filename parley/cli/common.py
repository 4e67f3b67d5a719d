"""What every ``parley`` sub-command shares: the consoles, the database, error output."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from parley.db import Database
from parley.errors import ParleyError
from parley.settings import get_settings

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")

AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

EXIT_REFUSED = 1
"""The command was understood but refused: unknown id, a transition the state machine does not
allow, an invalid input. Nothing was changed."""


def database() -> Database:
    return Database(get_settings().resolved_database_url)


def run_with_db(action: Callable[[Database], Awaitable[T]]) -> T:
    """Run one async action against Parley's database; a refusal prints its reason and exits
    1 (nothing was changed), never a traceback."""

    async def go() -> T:
        db = database()
        try:
            return await action(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(go())
    except ParleyError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_REFUSED) from exc


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))
