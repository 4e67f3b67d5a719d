"""What operators see of conversations: the JSON the CLI and the REST API both return, and the
masked form of a contact's address for places many people can read (Prefect run names,
artifacts, logs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from parley.conversation.state_machine import OPERATOR, Wait
from parley.db import Database, queries
from parley.db.models import CampaignVersion, Contact, Conversation, Message, NodeVisit
from parley.vocabulary import TERMINAL, Status, WaitKind

MASK = "•"


def mask_address(address: str) -> str:
    """Hide most of a phone number or mailbox, whatever its length: at least half the
    characters are masked, so a short number is never shown in full."""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}{MASK * 3}@{domain}"
    plus = "+" if address.startswith("+") or address.isdigit() else ""
    digits = address.lstrip("+")
    shown = min(3, len(digits) // 4), min(4, len(digits) // 4)
    hidden = len(digits) - sum(shown)
    return f"{plus}{digits[: shown[0]]}{MASK * hidden}{digits[len(digits) - shown[1] :]}"


def _summary(conv: Conversation, contact: Contact, campaign: CampaignVersion) -> dict[str, Any]:
    return {
        "id": conv.id,
        "uid": conv.uid,
        "channel": contact.channel,
        "contact": contact.address,
        "contact_name": contact.name,
        "status": conv.status.value,
        "campaign": campaign.name,
        "campaign_version": campaign.version,
        "current_node": conv.current_node,
        "step": conv.step,
        "waiting_for": conv.waiting_for,
        "wake_at": conv.wake_at.isoformat() if conv.wake_at else None,
        "flow_run_id": conv.flow_run_id,
        "updated_at": conv.updated_at.isoformat(),
    }


def _message(message: Message) -> dict[str, Any]:
    return {
        "direction": message.direction,
        "type": message.type,
        "text": message.text,
        "provider_message_id": message.provider_message_id,
        "status": message.status,
        "error": message.error,
        "created_at": message.created_at.isoformat(),
    }


async def list_conversations(
    db: Database, *, limit: int = 100, status: Status | None = None
) -> list[dict[str, Any]]:
    async with db.read() as session:
        rows = await queries.conversations.list_conversations(session, limit=limit, status=status)
    return [_summary(conv, contact, campaign) for conv, contact, campaign in rows]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _visit(visit: NodeVisit) -> dict[str, Any]:
    return {
        "node": visit.node,
        "entered_at": visit.entered_at.isoformat(),
        "left_at": _iso(visit.left_at),
        "outcome": visit.outcome,
        "next_node": visit.next_node,
        "attempts": visit.attempts,
        "error": visit.error,
    }


def _wait(conv: Conversation) -> dict[str, Any] | None:
    """What the conversation waits for now: an ended one waits for nothing, a paused one for
    an operator (whatever its node waited for before), else what its row records."""
    if conv.status in TERMINAL:
        return None
    wait: Wait | None = OPERATOR if conv.status is Status.PAUSED else None
    if wait is None and conv.waiting_for is not None:
        wait = Wait(WaitKind(conv.waiting_for), conv.wake_at)
    return None if wait is None else {"kind": wait.kind.value, "until": _iso(wait.until)}


async def show_conversation(
    db: Database, conversation_id: int, *, last_messages: int | None = None
) -> dict[str, Any]:
    """Everything about one conversation: its state, what it waits for, its step history and
    its transcript — all of it, or only the last ``last_messages`` messages and steps
    (``messages_total`` and ``history_total`` say how many there are), for views that must stay
    small whatever the conversation's length."""
    async with db.read() as session:
        conv, contact, campaign = await queries.conversations.conversation_with_context(
            session, conversation_id
        )
        if last_messages is None:
            messages = await queries.messages.transcript(session, conversation_id)
            visits = await queries.visits.visits_of(session, conversation_id)
            total, steps = len(messages), len(visits)
        else:
            messages, total = await queries.messages.transcript_tail(
                session, conversation_id, last_messages
            )
            visits, steps = await queries.visits.visits_tail(
                session, conversation_id, last_messages
            )
    detail = _summary(conv, contact, campaign)
    detail.update(
        variables=conv.variables,
        wait=_wait(conv),
        paused_by=conv.paused_by,
        task_result=conv.task_result,
        waiting_since=_iso(conv.waiting_since),
        last_error=conv.last_error,
        created_at=conv.created_at.isoformat(),
        ended_at=_iso(conv.ended_at),
        history=[_visit(v) for v in visits],
        history_total=steps,
        messages=[_message(m) for m in messages],
        messages_total=total,
    )
    return detail


# --- the conversation's page in the Prefect UI ------------------------------------------------

ARTIFACT_MESSAGES = 50
"""The artifact shows this many of the latest messages and this many of the latest steps, so
it stays the same size for a 2,000-message conversation (docs/architecture.md, rule 5)."""


def _cell(value: object) -> str:
    """A markdown table cell: pipes escaped, lines joined, never empty."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or "-"


def _quoted(text: str) -> str:
    """The message text as written, as a blockquote (each of its lines quoted)."""
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines() or [""])


def conversation_markdown(detail: dict[str, Any], *, limit: int = ARTIFACT_MESSAGES) -> str:
    """The conversation as a markdown page: a header (status, node, wait), the transcript and
    the step history. The contact's address is masked (many people read the Prefect UI); the
    texts are shown as written. At most the last ``limit`` messages and steps appear, with a
    line saying how many were left out."""
    lines = [
        f"# Conversation {detail['id']}",
        "",
        f"- **status:** {detail['status']}"
        + (f" (paused by {detail['paused_by']})" if detail.get("paused_by") else ""),
        f"- **campaign:** {detail['campaign']} v{detail['campaign_version']}",
        f"- **node:** `{detail['current_node']}` (step {detail['step']})",
        f"- **waiting for:** {_waiting_text(detail.get('wait'))}",
        f"- **contact:** {detail['channel']} {mask_address(detail['contact'])}",
    ]
    if detail.get("last_error"):
        lines.append(f"- **last error:** {_cell(detail['last_error'])}")
    lines += ["", "## Transcript", ""]
    messages = detail["messages"][-limit:]
    total = max(detail.get("messages_total", len(detail["messages"])), len(messages))
    if total > len(messages):
        lines += [f"*{total - len(messages)} earlier messages not shown.*", ""]
    if not messages:
        lines += ["*No messages yet.*", ""]
    for m in messages:
        who = "contact" if m["direction"] == "in" else "bot"
        status = f" · {m['status']}" if m["direction"] == "out" else ""
        lines += [f"**{who}** · {m['created_at']}{status}", ""]
        lines += [_quoted(m["text"] if m["text"] is not None else f"({m['type']} message)"), ""]
    history = detail.get("history", [])
    lines += _history_markdown(history, detail.get("history_total", len(history)), limit)
    return "\n".join(lines).rstrip() + "\n"


def _waiting_text(wait: dict[str, Any] | None) -> str:
    if not wait:
        return "nothing"
    return f"{wait['kind']}" + (f" until {wait['until']}" if wait.get("until") else "")


def _history_markdown(history: list[dict[str, Any]], total: int, limit: int) -> list[str]:
    lines = ["## Step history", ""]
    shown = history[-limit:]
    if max(total, len(history)) > len(shown):
        lines += [f"*{max(total, len(history)) - len(shown)} earlier steps not shown.*", ""]
    lines += [
        "| node | entered | left | outcome | next | attempts | error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in shown:
        cells = (
            f"`{v['node']}`",
            v["entered_at"],
            v["left_at"],
            v["outcome"] or "(here now)",
            v["next_node"],
            v["attempts"],
            v["error"],
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines
