"""``parley conversations``: look at conversations and act on them from outside their runs.

Every command that changes a conversation goes through ``parley.conversation.lifecycle`` (the state
machine's table, optimistic locking); a refusal — unknown id, a transition not allowed, an
invalid task result — prints why and exits 1 with nothing changed. A run owed a resume gets it
from the dispatcher within a tick.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from parley.cli.common import EXIT_REFUSED, AsJson, console, err_console, print_json, run_with_db
from parley.conversation import lifecycle, operator_views
from parley.conversation.lifecycle import Change
from parley.vocabulary import Status

conversations_app = typer.Typer(
    help="Inspect conversations; pause, resume, cancel, retry, signal them.",
    no_args_is_help=True,
)

ConversationId = Annotated[int, typer.Argument(help="The conversation's id.")]
Reason = Annotated[str, typer.Option(help="Recorded as the conversation's last_error.")]


@conversations_app.command("list")
def conversations_list(
    as_json: AsJson = False,
    status: Annotated[Status | None, typer.Option(help="Only this status.")] = None,
    limit: int = 100,
) -> None:
    """The newest conversations."""
    rows: list[dict[str, Any]] = run_with_db(
        lambda db: operator_views.list_conversations(db, limit=limit, status=status)
    )
    if as_json:
        print_json(rows)
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
def conversations_show(conversation_id: ConversationId, as_json: AsJson = False) -> None:
    """One conversation: its state, variables, step history and transcript."""
    detail: dict[str, Any] = run_with_db(
        lambda db: operator_views.show_conversation(db, conversation_id)
    )
    if as_json:
        print_json(detail)
        return
    _print_detail(detail)


def _print_detail(detail: dict[str, Any]) -> None:
    wait = detail["waiting_for"] or "nothing"
    if detail.get("wake_at"):
        wait += f" until {detail['wake_at']}"
    console.print(
        f"[bold]conversation {detail['id']}[/] {detail['channel']} {detail['contact']} "
        f"[cyan]{detail['status']}[/] at {detail['current_node']} (step {detail['step']}), "
        f"waiting for {wait}; flow run {detail['flow_run_id']}"
    )
    console.print(f"variables: {json.dumps(detail['variables'])}")
    if detail["last_error"]:
        console.print(f"[red]last error: {detail['last_error']}[/]")
    if detail.get("history"):
        history = Table("node", "entered", "left", "outcome", "attempts", "error", title="steps")
        for visit in detail["history"]:
            history.add_row(
                visit["node"],
                visit["entered_at"],
                visit["left_at"] or "-",
                visit["outcome"] or "(here now)",
                str(visit["attempts"]),
                visit["error"] or "",
            )
        console.print(history)
    table = Table("time", "dir", "text", "status", "provider id", title="messages")
    for m in detail["messages"]:
        table.add_row(
            m["created_at"],
            m["direction"],
            m["text"] or f"<{m['type']}>",
            m["status"],
            m["provider_message_id"] or "-",
        )
    console.print(table)


def _report(change: Change, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "id": change.conversation_id,
                "status": change.status.value,
                "run": change.run,
                "detail": change.detail,
            }
        )
        return
    owed = {
        "resume": "; its run will be resumed",
        "start": "; a new run will start",
        "end": "; its suspended run will be finished",
    }.get(change.run, "")
    console.print(
        f"conversation {change.conversation_id}: [cyan]{change.status.value}[/] "
        f"({change.detail}){owed}"
    )


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """``k=v`` options as a mapping; a malformed one is a refusal (exit 1)."""
    pairs: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            err_console.print(f"[red]{option} {item!r}: expected KEY=VALUE[/]")
            raise typer.Exit(EXIT_REFUSED)
        pairs[key.strip()] = value
    return pairs


@conversations_app.command("start")
def conversations_start(
    campaign: Annotated[str, typer.Option(help="The campaign's name (its latest version).")],
    identity: Annotated[int, typer.Option(help="The sender identity's id.")],
    to: Annotated[str, typer.Option("--to", help="The lead's address on --channel.")],
    channel: Annotated[str, typer.Option(help="The lead's channel.")] = "linkedin",
    name: Annotated[str | None, typer.Option(help="The lead's name.")] = None,
    field: Annotated[
        list[str] | None,
        typer.Option("--field", help="A contact field KEY=VALUE (email=..., repeatable)."),
    ] = None,
    var: Annotated[
        list[str] | None,
        typer.Option("--var", help="A variable KEY=VALUE (the campaign's inputs, repeatable)."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Start a business-initiated conversation (an outreach lead) from an identity; its run
    starts within a dispatcher tick."""
    fields, variables = _pairs(field, "--field"), _pairs(var, "--var")
    change = run_with_db(
        lambda db: lifecycle.start(
            db,
            campaign,
            identity,
            channel=channel,
            address=to,
            name=name,
            fields=fields,
            variables=variables,
        )
    )
    _report(change, as_json)


@conversations_app.command("pause")
def conversations_pause(conversation_id: ConversationId, as_json: AsJson = False) -> None:
    """Hold a conversation: it stops before its next node and holds no process."""
    _report(run_with_db(lambda db: lifecycle.pause(db, conversation_id)), as_json)


@conversations_app.command("resume")
def conversations_resume(conversation_id: ConversationId, as_json: AsJson = False) -> None:
    """Release a paused conversation: it goes on from where it stopped."""
    _report(run_with_db(lambda db: lifecycle.resume(db, conversation_id)), as_json)


@conversations_app.command("cancel")
def conversations_cancel(
    conversation_id: ConversationId,
    reason: Reason = "cancelled by an operator",
    as_json: AsJson = False,
) -> None:
    """End a conversation now: nothing more is sent (unsent messages are dropped)."""
    _report(run_with_db(lambda db: lifecycle.cancel(db, conversation_id, reason)), as_json)


@conversations_app.command("complete")
def conversations_complete(
    conversation_id: ConversationId,
    reason: Reason = "completed by an operator",
    as_json: AsJson = False,
) -> None:
    """Mark a conversation completed from outside (e.g. the deal closed elsewhere)."""
    _report(run_with_db(lambda db: lifecycle.complete(db, conversation_id, reason)), as_json)


@conversations_app.command("retry")
def conversations_retry(conversation_id: ConversationId, as_json: AsJson = False) -> None:
    """Continue a failed conversation from the node that failed, in a new flow run."""
    _report(run_with_db(lambda db: lifecycle.retry(db, conversation_id)), as_json)


def _json_object(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        err_console.print(f"[red]--data is not JSON: {exc}[/]")
        raise typer.Exit(EXIT_REFUSED) from exc
    if not isinstance(value, dict):
        err_console.print("[red]--data must be a JSON object[/]")
        raise typer.Exit(EXIT_REFUSED)
    return value


Data = Annotated[str | None, typer.Option("--data", help="A JSON object.")]


@conversations_app.command("signal")
def conversations_signal(
    conversation_id: ConversationId,
    kind: Annotated[
        str, typer.Argument(help="task_completed, field_changed or variables_changed.")
    ],
    data: Data = None,
    as_json: AsJson = False,
) -> None:
    """Update a conversation from outside; its run looks again only if that can change what it
    waits for."""
    payload = _json_object(data)
    _report(run_with_db(lambda db: lifecycle.signal(db, conversation_id, kind, payload)), as_json)


@conversations_app.command("task")
def conversations_task(
    conversation_id: ConversationId,
    outcome: Annotated[str, typer.Option(help="One of the task node's outcomes.")],
    data: Data = None,
    as_json: AsJson = False,
) -> None:
    """Complete the conversation's open task with an outcome (and the node's fields)."""
    result = {**_json_object(data), "outcome": outcome}
    _report(run_with_db(lambda db: lifecycle.complete_task(db, conversation_id, result)), as_json)
