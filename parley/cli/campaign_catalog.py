"""``parley campaign publish|list|show``: put a campaign file into Parley and read back what
is there (the same JSON as ``POST /api/campaigns`` and ``GET /api/campaigns...``).

``publish`` checks the campaign against this installation too (its channels, Prefect's Secret
blocks): the CLI is a composition root here, the one place in ``parley/`` that reaches for
``prefect_adapter`` (lazily, inside the command; pyproject's import contracts name it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from parley.campaign import publishing
from parley.campaign.installation import Installation
from parley.campaign.loading import parse_campaign
from parley.cli.common import AsJson, console, err_console, print_json, run_with_db
from parley.conversation import lifecycle
from parley.db import Database
from parley.errors import CampaignInvalid
from parley.settings import get_settings

EXIT_INVALID = 2
"""The file is not a valid campaign (or could not be read): every problem is printed."""


Activate = Annotated[
    bool,
    typer.Option("--activate", help="Activate it at once (a new campaign is otherwise a draft)."),
]


def campaign_publish(path: Path, activate: Activate = False, as_json: AsJson = False) -> None:
    """Validate FILE (against this installation's channels and secrets too) and store it as
    the campaign's next version (the same content again is the same version: nothing new).
    A new campaign is a draft until activated; running conversations keep their version."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err_console.print(f"[red]{path}[/]: {exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    try:  # checked before the database is opened: a wrong file has its own exit code
        parse_campaign(source, source=str(path))
    except CampaignInvalid as exc:
        _print_problems(path, exc)
        raise typer.Exit(EXIT_INVALID) from exc
    try:
        published = run_with_db(
            lambda db: publish_and_activate(db, source, str(path), _installation(), activate)
        )
    except _Refused as refused:
        _print_problems(path, refused.invalid)
        raise typer.Exit(EXIT_INVALID) from refused.invalid
    if as_json:
        print_json(published.as_dict())
        return
    for warning in published.warnings:
        err_console.print(f"[yellow]warning[/]: {warning}")
    what = "published" if published.created else "unchanged, already published as"
    console.print(
        f"{what} [bold]{published.name}[/] v{published.version} "
        f"(digest {published.digest[:12]}): [cyan]{published.status.value}[/]"
    )


async def publish_and_activate(
    db: Database, source: str, origin: str, installation: Installation, activate: bool
) -> publishing.Published:
    """Publish; with ``activate``, the campaign goes on as ``parley campaign activate`` would
    make it (releasing what its gate held). An invalid campaign is ``_Refused``: its problems
    have their own exit code, not run_with_db's."""
    try:
        published = await publishing.publish(db, source, origin=origin, installation=installation)
    except CampaignInvalid as exc:
        raise _Refused(exc) from exc
    if not activate:
        return published
    change = await lifecycle.activate_campaign(db, published.name)
    return dataclasses.replace(published, status=change.status)


class _Refused(Exception):
    def __init__(self, invalid: CampaignInvalid) -> None:
        super().__init__(str(invalid))
        self.invalid = invalid


def _installation() -> Installation:
    from prefect_adapter.composition import publish_installation

    return publish_installation(get_settings())


def _print_problems(path: Path, exc: CampaignInvalid) -> None:
    for node, message in exc.problems:
        err_console.print(f"[red]{path}[/]: [bold]{node or '<campaign>'}[/]: {message}")


def campaign_list(as_json: AsJson = False) -> None:
    """Every campaign: its status, its newest version and how many versions it has."""
    campaigns = run_with_db(publishing.list_campaigns)
    if as_json:
        print_json([c.as_dict() for c in campaigns])
        return
    table = Table("campaign", "status", "latest", "versions", "published")
    for c in campaigns:
        table.add_row(
            c.name,
            c.status.value,
            f"v{c.latest_version}",
            str(c.versions),
            c.published_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table if campaigns else "no campaigns published yet")


def campaign_show(
    name: Annotated[str, typer.Argument(help="The campaign's name.")],
    version: Annotated[int | None, typer.Option(help="Default: the newest.", min=1)] = None,
    as_yaml: Annotated[bool, typer.Option("--yaml", help="The exact text published.")] = False,
    as_json: AsJson = False,
) -> None:
    """One version of a campaign: its nodes and every version; --yaml prints its source."""
    if as_yaml:
        typer.echo(run_with_db(lambda db: publishing.campaign_source(db, name, version)), nl=False)
        return
    shown = run_with_db(lambda db: publishing.show_campaign(db, name, version))
    if as_json:
        print_json(shown)
        return
    reason = f" ({shown['status_reason']})" if shown["status_reason"] else ""
    console.print(
        f"[bold]{shown['name']}[/] v{shown['version']} [cyan]{shown['status']}[/]{reason}: "
        f"{shown['channel']}, "
        f"starts at {shown['start']}, {len(shown['nodes'])} nodes, {shown['edges']} edges"
    )
    console.print("nodes: " + ", ".join(f"{n['id']} ({n['type']})" for n in shown["nodes"]))
    versions = ", ".join(f"v{v['version']} {v['published_at'][:16]}" for v in shown["versions"])
    console.print(f"versions: {versions}")
