"""``parley campaign publish|list|show``: put a campaign file into Parley and read back what
is there (the same JSON as ``POST /api/campaigns`` and ``GET /api/campaigns...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from parley.campaign import publishing
from parley.campaign.loading import parse_campaign
from parley.cli.common import AsJson, console, err_console, print_json, run_with_db
from parley.errors import CampaignInvalid

EXIT_INVALID = 2
"""The file is not a valid campaign (or could not be read): every problem is printed."""


def campaign_publish(path: Path, as_json: AsJson = False) -> None:
    """Validate FILE and store it as the campaign's next version (the same content again is
    the same version: nothing new). Running conversations keep their version."""
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err_console.print(f"[red]{path}[/]: {exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    try:  # checked before the database is opened: a wrong file has its own exit code
        parse_campaign(source, source=str(path))
    except CampaignInvalid as exc:
        for node, message in exc.problems:
            err_console.print(f"[red]{path}[/]: [bold]{node or '<campaign>'}[/]: {message}")
        raise typer.Exit(EXIT_INVALID) from exc
    published = run_with_db(lambda db: publishing.publish(db, source, origin=str(path)))
    if as_json:
        print_json(published.as_dict())
        return
    what = "published" if published.created else "unchanged, already published as"
    console.print(
        f"{what} [bold]{published.name}[/] v{published.version} (digest {published.digest[:12]})"
    )


def campaign_list(as_json: AsJson = False) -> None:
    """Every campaign: its newest version, how many versions, and whether it is paused."""
    campaigns = run_with_db(publishing.list_campaigns)
    if as_json:
        print_json([c.as_dict() for c in campaigns])
        return
    table = Table("campaign", "latest", "versions", "published", "paused")
    for c in campaigns:
        table.add_row(
            c.name,
            f"v{c.latest_version}",
            str(c.versions),
            c.published_at.strftime("%Y-%m-%d %H:%M"),
            "paused" if c.paused else "",
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
    paused = " [yellow](paused)[/]" if shown["paused"] else ""
    console.print(
        f"[bold]{shown['name']}[/] v{shown['version']}{paused}: {shown['channel']}, "
        f"starts at {shown['start']}, {len(shown['nodes'])} nodes, {shown['edges']} edges"
    )
    console.print("nodes: " + ", ".join(f"{n['id']} ({n['type']})" for n in shown["nodes"]))
    versions = ", ".join(f"v{v['version']} {v['published_at'][:16]}" for v in shown["versions"])
    console.print(f"versions: {versions}")
