"""``parley send``: an operator's own message to a conversation's contact, now — or not at all.

It goes through the identity's decision like every outreach action (working hours, caps,
parked channels): when it may not go out now, nothing is sent and the command says why (exit
1). When it goes out, the automated sequence is interrupted: its queued actions are skipped,
the node waiting for one counts as ``taken_over`` (the hand-sent message stands in for it), and
the conversation is paused until someone resumes it; then it goes on from that node.
"""

from __future__ import annotations

from typing import Annotated

import typer

from parley.campaign.registry import CampaignCache
from parley.channels.catalog import build_outreach
from parley.cli.common import EXIT_REFUSED, AsJson, console, err_console, print_json, run_with_db
from parley.clock import clock_from
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.outreach import dispatch
from parley.outreach.dispatch import ManualSend
from parley.runtime import Runtime
from parley.settings import get_settings


def send(
    conversation_id: Annotated[int, typer.Argument(help="The conversation's id.")],
    text: Annotated[str, typer.Option("--text", help="What to send.")],
    action_type: Annotated[
        str | None,
        typer.Option("--type", help="e.g. linkedin_message, email (default: by channel)"),
    ] = None,
    subject: Annotated[str | None, typer.Option(help="An email's subject.")] = None,
    as_json: AsJson = False,
) -> None:
    """Send a message now from the conversation's identity, if its hours and limits allow."""

    async def go(db: Database) -> ManualSend:
        settings = get_settings()
        rt = Runtime(
            db=db,
            channels={},
            post_json=post_json,
            campaigns=CampaignCache(),
            clock=clock_from(settings.clock_file),
            outreach=build_outreach(settings),
        )
        try:
            return await dispatch.manual_send(
                rt, conversation_id, text, action_type=action_type, subject=subject
            )
        finally:
            for provider in rt.outreach.values():
                await provider.aclose()

    result = run_with_db(go)
    if as_json:
        print_json({"sent": result.sent, "reason": result.reason, "action_id": result.action_id})
    elif result.sent:
        console.print(f"[green]sent[/] ({result.reason})")
    else:
        err_console.print(f"[yellow]not sent[/]: {result.reason}")
    if not result.sent:
        raise typer.Exit(EXIT_REFUSED)
