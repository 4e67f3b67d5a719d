"""``parley campaign``: check and publish campaign files, list and show them; activate, pause,
resume and archive campaigns (their status: ``parley.campaign.status``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from parley.cli import campaign_catalog, campaign_versions
from parley.cli.common import AsJson, console, err_console, print_json, run_with_db
from parley.conversation import lifecycle
from parley.conversation.lifecycle import CampaignChange
from parley.errors import CampaignInvalid, NotFound
from parley.vocabulary import CampaignStatus

campaign_app = typer.Typer(help="Campaign graphs.", no_args_is_help=True)

EXIT_INVALID = 2
"""``validate`` found problems in the file (or could not read it)."""

CampaignName = Annotated[str, typer.Argument(help="The campaign's name.")]


@campaign_app.command("validate")
def campaign_validate(path: Path) -> None:
    """Check a campaign file; print every problem with its node id (exit 2 if any)."""
    from parley.campaign import load_campaign

    try:
        campaign = load_campaign(path)
    except CampaignInvalid as exc:
        for node, message in exc.problems:
            err_console.print(f"[red]{path}[/]: [bold]{node or '<campaign>'}[/]: {message}")
        raise typer.Exit(EXIT_INVALID) from exc
    except (OSError, UnicodeDecodeError, NotFound) as exc:
        err_console.print(f"[red]{path}[/]: {exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    console.print(
        f"[green]ok[/] {campaign.name} v{campaign.version}: "
        f"{len(campaign.nodes)} nodes, {len(campaign.edges)} edges"
    )


def _report(change: CampaignChange, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "name": change.name,
                "status": change.status.value,
                "paused": change.paused,
                "conversations": [
                    {"id": c.conversation_id, "status": c.status.value, "detail": c.detail}
                    for c in change.changes
                ],
            }
        )
        return
    console.print(
        f"campaign {change.name}: [cyan]{change.status.value}[/] "
        + _WHAT_IT_MEANS[change.status].format(n=len(change.changes))
    )


_WHAT_IT_MEANS = {
    CampaignStatus.PAUSED: "({n} waiting conversations held now; running ones stop at their "
    "next node)",
    CampaignStatus.ACTIVE: "({n} conversations released; running ones go on)",
    CampaignStatus.ARCHIVED: "(new conversations are refused; running ones finish)",
    CampaignStatus.DRAFT: "(its conversations wait until it is activated)",
}


@campaign_app.command("pause")
def campaign_pause(
    name: CampaignName,
    reason: Annotated[str | None, typer.Option(help="Why, for the other operators.")] = None,
    as_json: AsJson = False,
) -> None:
    """Stop every conversation of the campaign at its next node (they hold no process)."""
    _report(run_with_db(lambda db: lifecycle.pause_campaign(db, name, reason)), as_json)


@campaign_app.command("resume")
def campaign_resume(name: CampaignName, as_json: AsJson = False) -> None:
    """Release the conversations the campaign's pause held (operators' own pauses stand)."""
    _report(run_with_db(lambda db: lifecycle.resume_campaign(db, name)), as_json)


@campaign_app.command("activate")
def campaign_activate(name: CampaignName, as_json: AsJson = False) -> None:
    """Let a draft (or paused, or archived) campaign go: the conversations waiting at its gate
    are released and new ones start at once."""
    _report(run_with_db(lambda db: lifecycle.activate_campaign(db, name)), as_json)


@campaign_app.command("archive")
def campaign_archive(
    name: CampaignName,
    reason: Annotated[str | None, typer.Option(help="Why, for the other operators.")] = None,
    as_json: AsJson = False,
) -> None:
    """No new conversations from now on (starts are refused); the running ones finish."""
    _report(run_with_db(lambda db: lifecycle.archive_campaign(db, name, reason)), as_json)


campaign_app.command("funnel")(campaign_versions.campaign_funnel)
campaign_app.command("migrate")(campaign_versions.campaign_migrate)
campaign_app.command("publish")(campaign_catalog.campaign_publish)
campaign_app.command("list")(campaign_catalog.campaign_list)
campaign_app.command("show")(campaign_catalog.campaign_show)
