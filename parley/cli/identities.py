"""``parley identity``: the sender identities (mailboxes, LinkedIn seats, WhatsApp numbers), their
policies, reconnecting a parked channel, and why an identity's queue is not moving.

Policies and provider settings come as a file (``--policy FILE``: YAML or JSON) or inline JSON
(``--policy-json``); ``parley.outreach.identities`` checks them and names each bad key. A refusal
(unknown id, a duplicate, an invalid policy) prints why and exits 1 with nothing changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from parley.cli.common import EXIT_REFUSED, AsJson, console, err_console, print_json, run_with_db
from parley.clock import clock_from
from parley.outreach import identities
from parley.settings import get_settings

identities_app = typer.Typer(
    help="Sender identities: add, list, show why the queue waits, update, reconnect.",
    no_args_is_help=True,
)

IdentityId = Annotated[int, typer.Argument(help="The identity's id.")]
Name = Annotated[str | None, typer.Option(help='A name for people ("Ana\'s mailbox").')]
Timezone = Annotated[
    str | None,
    typer.Option(help="IANA timezone its working hours and daily caps are read in (default UTC)."),
]
PolicyFile = Annotated[
    Path | None,
    typer.Option("--policy", help="Policy file (YAML or JSON): working_hours and limits."),
]
PolicyJson = Annotated[str | None, typer.Option("--policy-json", help="The policy as JSON.")]
SettingsFile = Annotated[
    Path | None,
    typer.Option("--settings", help="Provider settings file (YAML or JSON): SMTP login, ..."),
]
SettingsJson = Annotated[
    str | None, typer.Option("--settings-json", help="Provider settings as JSON.")
]


def _refuse(message: str) -> typer.Exit:
    err_console.print(f"[red]{message}[/]")
    return typer.Exit(EXIT_REFUSED)


def _document(path: Path | None, text: str | None, what: str) -> dict[str, Any] | None:
    """The mapping given as a file or inline, or None when neither was given."""
    if path is not None and text is not None:
        raise _refuse(f"give --{what} or --{what}-json, not both")
    if path is None and text is None:
        return None
    try:
        if path is not None:
            source = path.read_text(encoding="utf-8")
            value = json.loads(source) if path.suffix == ".json" else yaml.safe_load(source)
        else:
            value = json.loads(text or "")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise _refuse(f"--{what}: cannot read it: {exc}") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _refuse(f"--{what}: expected a mapping, got {type(value).__name__}")
    return value


@identities_app.command("add")
def identity_add(
    channel: Annotated[str, typer.Argument(help="email, linkedin or whatsapp.")],
    address: Annotated[
        str, typer.Argument(help="The mailbox, the LinkedIn seat's id, the WhatsApp number.")
    ],
    name: Name = None,
    timezone: Timezone = None,
    policy: PolicyFile = None,
    policy_json: PolicyJson = None,
    settings: SettingsFile = None,
    settings_json: SettingsJson = None,
    as_json: AsJson = False,
) -> None:
    """Add a sender identity (defaults: Mon-Fri 09:00-18:00 and the usual outreach caps)."""
    policy_doc = _document(policy, policy_json, "policy")
    settings_doc = _document(settings, settings_json, "settings")
    added: dict[str, Any] = run_with_db(
        lambda db: identities.add_identity(
            db,
            channel,
            address,
            name=name,
            timezone=timezone,
            policy=policy_doc,
            settings=settings_doc,
        )
    )
    if as_json:
        print_json(added)
        return
    console.print(
        f"identity [bold]{added['id']}[/]: {added['channel']} {added['address']} "
        f"({added['timezone']}) added"
    )


@identities_app.command("list")
def identity_list(as_json: AsJson = False) -> None:
    """Every identity with its queue and parked channels."""
    rows: list[dict[str, Any]] = run_with_db(identities.list_identities)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "channel", "address", "name", "timezone", "ready", "parked", "flagged")
    for row in rows:
        parked = ", ".join(f"{q} ({p['actions']})" for q, p in row["parked"].items()) or "-"
        table.add_row(
            str(row["id"]),
            row["channel"],
            row["address"],
            row["name"] or "",
            row["timezone"],
            str(row["queued"]["ready"]),
            parked,
            row["flagged"] or "",
        )
    console.print(table)


@identities_app.command("show")
def identity_show(identity_id: IdentityId, as_json: AsJson = False) -> None:
    """Why the identity's queue is not moving and when it will: next window, which cap,
    parked channels, provider blocks, counts today and this week."""
    clock = clock_from(get_settings().clock_file)
    detail: dict[str, Any] = run_with_db(
        lambda db: identities.explain(db, identity_id, clock=clock)
    )
    if as_json:
        print_json(detail)
        return
    _print_explanation(detail)


def _print_explanation(detail: dict[str, Any]) -> None:
    name = f" ({detail['name']})" if detail["name"] else ""
    console.print(
        f"[bold]identity {detail['id']}[/] {detail['channel']} {detail['address']}{name}, "
        f"{detail['timezone']}"
    )
    status = detail["status"]
    colour = "green" if status["state"] in ("moving", "idle") else "yellow"
    console.print(f"[{colour}]{status['sentence']}[/]")
    if detail["flagged"]:
        console.print(f"[red]flagged: {detail['flagged']}[/]")
    hours = detail["working_hours"]
    opening = "open now" if hours["open_now"] else f"next opens {hours['next_open_local']}"
    windows = "; ".join(f"{day} {', '.join(w)}" for day, w in hours["weekly"].items() if w)
    console.print(f"working hours: {windows or 'none'} ({opening})")
    nxt = detail["next_action"]
    ready = detail["queued"]["ready"]
    if nxt:
        why = f" ({nxt['reason']})" if nxt["reason"] else ""
        console.print(
            f"queue: {ready} ready; next #{nxt['id']} {nxt['type']} not before "
            f"{nxt['not_before']}{why}"
        )
    else:
        console.print(f"queue: {ready} ready")
    if detail["queued"]["held"]:
        console.print(f"held: {detail['queued']['held']} action(s) of paused conversations")
    if detail["uncertain"]:
        console.print(
            f"[yellow]uncertain: {detail['uncertain']} action(s)[/] whose call may have gone"
            " out wait for the provider's status callback (never resent)"
        )
    for queue, entry in detail["parked"].items():
        console.print(
            f"[yellow]parked {queue}[/]: {entry['actions']} action(s) since {entry['since']}"
            f" ({entry['reason'] or 'no reason recorded'})"
        )
        unpark = detail.get("unpark", {}).get(queue)
        if unpark:
            checked = unpark["checked_at"]
            look = f"last checked {checked}: {unpark['check']}" if checked else "not checked yet"
            console.print(f"  unparks by itself once the account works ({look})", markup=False)
            console.print(f"  now: {unpark['command']}", markup=False, soft_wrap=True)
    for key, until in detail["blocked_until"].items():
        console.print(f"provider block {key} until {until}")
    usage = Table("action", "today", "daily cap", "this week", "weekly cap", title="usage")
    for kind, used in detail["usage"].items():
        usage.add_row(
            kind,
            str(used["today"]),
            _cap(used["daily_cap"]),
            str(used["this_week"]),
            _cap(used["weekly_cap"]),
        )
    console.print(usage)
    if detail["settings"]:
        console.print(f"settings: {json.dumps(detail['settings'], ensure_ascii=False)}")


def _cap(cap: int | None) -> str:
    return "-" if cap is None else str(cap)


@identities_app.command("update")
def identity_update(
    identity_id: IdentityId,
    name: Name = None,
    timezone: Timezone = None,
    policy: PolicyFile = None,
    policy_json: PolicyJson = None,
    settings: SettingsFile = None,
    settings_json: SettingsJson = None,
    clear_flag: Annotated[
        bool, typer.Option("--clear-flag", help="Forget the identity's flag.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Change an identity: a policy replaces the old one, and the actions put off under it are
    decided again at once; settings are merged key by key (null removes a key), and changing
    where a secret is sent (gateway_url, smtp_host, ...) needs the secret again; an empty
    --name clears it."""
    policy_doc = _document(policy, policy_json, "policy")
    settings_doc = _document(settings, settings_json, "settings")
    clock = clock_from(get_settings().clock_file)
    updated: dict[str, Any] = run_with_db(
        lambda db: identities.update_identity(
            db,
            identity_id,
            name=name,
            timezone=timezone,
            policy=policy_doc,
            settings=settings_doc,
            clear_flag=clear_flag,
            clock=clock,
        )
    )
    if as_json:
        print_json(updated)
        return
    console.print(f"identity [bold]{updated['id']}[/] updated")


@identities_app.command("reconnect")
def identity_reconnect(
    identity_id: IdentityId,
    channel: Annotated[
        str,
        typer.Argument(
            help="The parked queue to release, as `identity show` names it: linkedin, "
            "whatsapp, credits, email-{mailbox} (or email: the identity's mailbox)."
        ),
    ],
    as_json: AsJson = False,
) -> None:
    """After a human fixed the channel: its parked actions go back to the queue, in order."""
    moved: int = run_with_db(lambda db: identities.reconnect(db, identity_id, channel))
    if as_json:
        print_json({"id": identity_id, "channel": channel, "unparked": moved})
        return
    console.print(f"identity {identity_id}: {moved} {channel} action(s) back in the queue")
