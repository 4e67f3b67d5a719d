"""``parley campaign funnel`` and ``parley campaign migrate``: how a campaign version's
conversations fare, node by node, and moving its waiting conversations to another version.

The commands are plain functions registered on ``campaign_app`` by ``parley.cli.campaigns``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from parley.cli.common import EXIT_REFUSED, AsJson, console, err_console, print_json, run_with_db
from parley.conversation import funnel, migration
from parley.conversation.funnel import Funnel
from parley.conversation.migration import Migration, MigrationRefused
from parley.db import Database

EXIT_MIGRATION_REFUSED = 2
"""``migrate`` refused: some waiting conversation's node has no mapping; nothing moved."""

CampaignName = Annotated[str, typer.Argument(help="The campaign's name.")]


def campaign_funnel(
    name: CampaignName,
    version: Annotated[
        int | None, typer.Option("--version", help="The version (default: the latest).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Per node: how many reached it, wait there now, dropped off, completed; time spent.

    ``reached`` and ``dropped off`` count conversations, ``completed`` counts visits (left by
    an edge or completed there); p50/p95 are over closed visits.
    """
    result: Funnel = run_with_db(lambda db: funnel.campaign_funnel(db, name, version))
    if as_json:
        print_json(result.as_dict())
        return
    table = Table(title=f"{result.campaign} v{result.version}", box=box.SIMPLE_HEAD)
    table.add_column("node", overflow="fold")
    table.add_column("type")
    for heading in ("reached", "waiting\nnow", "dropped\noff", "completed", "p50", "p95"):
        table.add_column(heading, justify="right", no_wrap=True)
    for node in result.nodes:
        table.add_row(
            node.node,
            node.type + (f": {' + '.join(node.actions)}" if node.actions else ""),
            str(node.reached),
            str(node.waiting_now),
            str(node.dropped_off),
            str(node.completed),
            human_duration(node.p50_seconds),
            human_duration(node.p95_seconds),
        )
    console.print(table)


def human_duration(seconds: float | None) -> str:
    """``3d 4h``, ``12m 5s``, ``0.4s``: the two largest units, enough to read a funnel."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    parts: list[str] = []
    remaining = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count or parts:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2])


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            err_console.print(f"[red]--map {pair!r}: write it as old_node=new_node[/]")
            raise typer.Exit(EXIT_REFUSED)
        mapping[old.strip()] = new.strip()
    return mapping


def campaign_migrate(
    name: CampaignName,
    to: Annotated[int, typer.Option("--to", help="The version to move them to.")],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="old_node=new_node for a node the target does not have."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Move the campaign's waiting conversations to another version (exit 2: refused).

    Suspended and paused conversations on other versions move to version --to, each current
    node mapped by --map or kept when the target has it; running ones keep their version.
    When a current node has no place in the target, nothing moves and each such conversation
    is listed.
    """
    mapping = parse_mapping(map_ or [])

    async def attempt(db: Database) -> Migration | MigrationRefused:
        try:
            return await migration.migrate(db, name, to, mapping)
        except MigrationRefused as refused:
            return refused

    outcome = run_with_db(attempt)
    if isinstance(outcome, MigrationRefused):
        if as_json:
            print_json(outcome.as_dict())
        else:
            err_console.print(f"[red]{outcome}[/]")
        raise typer.Exit(EXIT_MIGRATION_REFUSED)
    if as_json:
        print_json(outcome.as_dict())
        return
    console.print(
        f"campaign {outcome.campaign}: [green]{len(outcome.moved)} waiting conversations moved "
        f"to v{outcome.to_version}[/]; {len(outcome.staying)} running ones keep their version"
    )
    for moved in outcome.moved:
        how = "entered afresh; its run looks again" if moved.fresh else "its progress kept"
        console.print(
            f"  conversation {moved.conversation_id} ({moved.status}): "
            f"v{moved.from_version} {moved.from_node} -> {moved.to_node} ({how})"
        )
