"""The ``parley`` command for the people who operate Parley (typer + rich): one module per
noun (``conversations``, ``campaigns``), the local stack's commands here."""

from __future__ import annotations

from typing import Annotated

import typer

from parley.cli.campaigns import campaign_app
from parley.cli.common import console
from parley.cli.conversations import conversations_app
from parley.cli.identities import identities_app
from parley.cli.leads import leads_app
from parley.cli.sending import send
from parley.cli.suppressions import suppress_app
from parley.db import migrate as db_migrate
from parley.settings import get_settings

app = typer.Typer(help="Parley: durable multi-step conversations on Prefect.", no_args_is_help=True)
db_app = typer.Typer(help="Parley's own database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(campaign_app, name="campaign")
app.add_typer(conversations_app, name="conversations")
app.add_typer(identities_app, name="identity")
app.add_typer(suppress_app, name="suppress")
app.add_typer(leads_app, name="leads")
app.command("send")(send)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all Alembic migrations to PARLEY_DATABASE_URL (or the embedded SQLite file)."""
    url = get_settings().resolved_database_url
    db_migrate.upgrade(url)
    console.print(f"[green]database is at {', '.join(db_migrate.current_heads())}[/]")


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
    from devkit.stack.dev import run_dev

    raise typer.Exit(run_dev(get_settings(), fake_providers=fake_providers))


@app.command()
def chat(
    phone: Annotated[
        str | None, typer.Option(help="Your WhatsApp number (digits); random by default.")
    ] = None,
) -> None:
    """Be the contact: type messages into a running `parley dev` and read the bot's answers."""
    from devkit.stack.chat import run_chat

    raise typer.Exit(run_chat(get_settings(), phone))


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the stack running afterwards.")] = False,
) -> None:
    """Start the whole stack on embedded defaults and play three WhatsApp users through it."""
    from devkit.stack.demo import run_demo

    raise typer.Exit(run_demo(keep=keep))


@app.command("outreach-demo")
def outreach_demo(
    leads: Annotated[int, typer.Option(min=2, help="How many leads to start.")] = 20,
    keep: Annotated[
        bool, typer.Option(help="Leave the stack running afterwards (if the demo started it).")
    ] = False,
) -> None:
    """The outreach campaign for N leads on one LinkedIn seat, on a running `parley dev` (or a
    stack it starts): visits, capped connection requests, a reply that stops a sequence."""
    from devkit.stack.outreach_demo import run_outreach_demo

    raise typer.Exit(run_outreach_demo(leads=leads, keep=keep))


def main() -> None:
    app()
