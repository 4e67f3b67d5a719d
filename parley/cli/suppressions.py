"""``parley suppress``: the do-not-contact list — add, remove, list, import a CSV.

An address is normalised before it is stored (``parley.suppression``): ``Ana@Example.com`` and
``ana@example.com`` are one entry. Without ``--identity`` an entry covers every identity of the
installation. A refusal (an address that is none of email, phone, LinkedIn profile; an unknown
reason or identity) prints why and exits 1 with nothing changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from parley import suppression
from parley.cli.common import EXIT_REFUSED, AsJson, console, err_console, print_json, run_with_db
from parley.vocabulary import SUPPRESSION_REASONS

suppress_app = typer.Typer(
    help="The do-not-contact list: add, remove, list, import a CSV.", no_args_is_help=True
)

Address = Annotated[
    str, typer.Argument(help="An email address, a phone number (+country code) or a LinkedIn URL.")
]
IdentityOption = Annotated[
    int | None,
    typer.Option("--identity", help="Only for this identity (default: installation-wide)."),
]


@suppress_app.command("add")
def suppress_add(
    address: Address,
    reason: Annotated[
        str, typer.Option(help=f"Why: {', '.join(repr(r) for r in SUPPRESSION_REASONS)}.")
    ] = "manual",
    identity: IdentityOption = None,
    note: Annotated[str | None, typer.Option(help="Free text kept with the entry.")] = None,
    as_json: AsJson = False,
) -> None:
    """Nobody (or the identity) contacts the address any more; idempotent."""
    entry, created = run_with_db(
        lambda db: suppression.suppress(
            db, address, reason, identity_id=identity, note=note, by="cli"
        )
    )
    if as_json:
        print_json({**entry, "created": created})
        return
    scope = _scope(entry["identity_id"])
    if created:
        console.print(f"suppressed {entry['address']} {scope} ({entry['reason']})")
    else:
        console.print(
            f"{entry['address']} was already suppressed {scope} "
            f"({entry['reason']}, since {entry['created_at']})"
        )


@suppress_app.command("remove")
def suppress_remove(address: Address, identity: IdentityOption = None) -> None:
    """Take the address off the list (of that scope only)."""
    removed = run_with_db(lambda db: suppression.unsuppress(db, address, identity_id=identity))
    console.print(f"{removed.address} may be contacted again {_scope(identity)}")


@suppress_app.command("list")
def suppress_list(
    identity: Annotated[
        int | None,
        typer.Option("--identity", help="What applies to it: its own and installation-wide."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """The entries, oldest first."""
    entries = run_with_db(lambda db: suppression.listing(db, identity))
    if as_json:
        print_json(entries)
        return
    table = Table("address", "kind", "scope", "reason", "since", "by", "note")
    for entry in entries:
        table.add_row(
            entry["address"],
            entry["kind"],
            _scope(entry["identity_id"]),
            entry["reason"],
            entry["created_at"][:19],
            entry["created_by"] or "-",
            entry["note"] or "",
        )
    console.print(table)


@suppress_app.command("import")
def suppress_import(
    file: Annotated[Path, typer.Argument(help="CSV with columns address,reason,identity,note.")],
    as_json: AsJson = False,
) -> None:
    """Suppress every row; a bad row is reported (exit 1) and the others are stored. Importing
    the same file again adds nothing."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err_console.print(f"[red]cannot read {file}: {exc}[/]")
        raise typer.Exit(EXIT_REFUSED) from exc
    report = run_with_db(lambda db: suppression.import_csv(db, text))
    if as_json:
        print_json([row.__dict__ for row in report])
    else:
        table = Table("line", "address", "result")
        for row in report:
            style = "red" if row.invalid else ""
            table.add_row(str(row.line), row.address, row.result, style=style)
        console.print(table)
    invalid = sum(row.invalid for row in report)
    added = sum(row.result == suppression.ADDED for row in report)
    err_console.print(
        f"{added} added, {len(report) - added - invalid} already there, {invalid} invalid"
    )
    if invalid:
        raise typer.Exit(EXIT_REFUSED)


def _scope(identity_id: int | None) -> str:
    return "installation-wide" if identity_id is None else f"for identity {identity_id}"
