"""The conversation state machine: what one step does, decided without any I/O.

A step is one unit of progress with at most one side effect: send a node's message, call a
node's HTTP endpoint, or consume one inbound reply. Keeping it to one effect per step is what
lets the step counter name every side effect (``conv:{id}:step:{n}``) so a replay after a crash
finds the effect it already had instead of causing it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from parley.campaign import (
    AskNode,
    Campaign,
    EndNode,
    HttpNode,
    Outcome,
    SendNode,
    check_answer,
    render,
    render_url,
)
from parley.channels.base import OutboundMessage


class Status(StrEnum):
    """Where a conversation is in its life. The row says it; Prefect's run state follows."""

    PENDING = "pending"  # stored, no run has taken it over yet
    RUNNING = "running"  # a run is executing its steps
    HOT = "hot"  # a run waits in-process for the next message (a live chat)
    SUSPENDED = "suspended"  # its run is suspended in Prefect: no process, no slot
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE: frozenset[Status] = frozenset(
    {Status.PENDING, Status.RUNNING, Status.HOT, Status.SUSPENDED}
)
TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
LIVE: frozenset[Status] = frozenset({Status.RUNNING, Status.HOT})
"""A process is working on the conversation right now (it renews the lease)."""


class WaitKind(StrEnum):
    """What a waiting conversation waits for."""

    REPLY = "reply"  # the contact's next message
    TIMER = "timer"  # a point in time (a delay, a follow-up)
    ACTION = "action"  # an outreach action the identity's dispatcher will run
    OPERATOR = "operator"  # a person: a paused conversation, a task to complete


@dataclass(frozen=True)
class Wait:
    """Why a conversation waits, and until when (``None``: for as long as it takes)."""

    kind: WaitKind
    until: datetime | None = None


REPLY = Wait(WaitKind.REPLY)


TRIGGER_STEP = -1
"""``consumed_step`` of inbound messages that are no answer: the one that started a
conversation, and reactions (kept for the transcript only)."""


def step_ref(conversation_id: int, step: int) -> str:
    """Our id for step ``n``'s side effect; the provider reference and the http node's
    idempotency key derive from it. Lowercase letters, digits and dashes only."""
    return f"conv-{conversation_id}-step-{step}"


def suspend_key(step: int, sleeps: int) -> str:
    """Prefect's key for one suspend: a repeated key would return the input already given, and
    anything but lowercase letters, digits and dashes fails after the run is marked suspended."""
    return f"wait-{step}-{sleeps}"


@dataclass(frozen=True)
class Cursor:
    """Where a conversation stands: the only thing a flow carries between steps (rule 5)."""

    conversation_id: int
    step: int
    status: Status
    node: str
    wait: Wait | None = None
    successor: int | None = None  # the conversation its unread messages were handed to

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def awaiting_reply(self) -> bool:
        return self.active and self.wait is not None and self.wait.kind is WaitKind.REPLY


@dataclass(frozen=True)
class Snapshot:
    current_node: str
    variables: Mapping[str, Any]
    attempts: int
    wait: Wait | None


@dataclass(frozen=True)
class Reply:
    message_id: int
    text: str | None
    reply_id: str | None


@dataclass(frozen=True)
class HttpCall:
    url: str
    body: dict[str, Any]
    headers: dict[str, str]  # may still hold {secret.name}: filled only when sending
    result_var: str | None
    timeout_seconds: float


@dataclass(frozen=True)
class Transition:
    """The new state after a step plus the one effect that step performs."""

    current_node: str
    variables: dict[str, Any]
    attempts: int
    wait: Wait | None
    status: Status
    consumed_message_id: int | None = None
    outbound: OutboundMessage | None = None
    http: HttpCall | None = None
    error: str | None = None  # why the conversation failed, or why it took an error edge


def campaign_env(campaign: Campaign, environ: Mapping[str, str]) -> dict[str, str]:
    """The values of the campaign's declared ``env:`` names: the process environment where it
    sets them, else the campaign's defaults. Undeclared names are never read."""
    return {name: environ.get(name, default) for name, default in campaign.env.items()}


def plan_step(
    campaign: Campaign,
    snapshot: Snapshot,
    reply: Reply | None,
    environ: Mapping[str, str] | None = None,
) -> Transition:
    env = campaign_env(campaign, environ or {})
    if snapshot.wait is not None and snapshot.wait.kind is WaitKind.REPLY:
        if reply is None:
            raise ValueError("a step that waits for a reply needs one")
        return _consume_reply(campaign, snapshot, reply, env)
    return _execute_node(campaign, snapshot, env)


def plan_failure(
    campaign: Campaign,
    snapshot: Snapshot,
    reason: str,
    environ: Mapping[str, str] | None = None,
) -> Transition:
    """A node failed for good: follow its ``when: error`` edge, or end ``failed`` after telling
    the contact the campaign's ``error_text`` (never leave them waiting in silence)."""
    variables = dict(snapshot.variables)
    target = campaign.next_node(snapshot.current_node, variables, outcome="error")
    if target is not None:
        return Transition(target, variables, 0, None, Status.RUNNING, error=reason)
    env = campaign_env(campaign, environ or {})
    apology = (
        OutboundMessage(render(campaign.error_text, variables, env))
        if campaign.error_text
        else None
    )
    return Transition(
        snapshot.current_node, variables, 0, None, Status.FAILED, outbound=apology, error=reason
    )


def _moved_to(
    campaign: Campaign, snapshot: Snapshot, variables: dict[str, Any], outcome: Outcome = "ok"
) -> Transition:
    target = campaign.next_node(snapshot.current_node, variables, outcome=outcome)
    if target is None:
        return Transition(snapshot.current_node, variables, 0, None, Status.COMPLETED)
    return Transition(target, variables, 0, None, Status.RUNNING)


def _execute_node(campaign: Campaign, snapshot: Snapshot, env: Mapping[str, str]) -> Transition:
    node = campaign.node(snapshot.current_node)
    variables = dict(snapshot.variables)
    if isinstance(node, SendNode):
        moved = _moved_to(campaign, snapshot, variables)
        return replace(moved, outbound=OutboundMessage(render(node.text, variables, env)))
    if isinstance(node, AskNode):
        prompt = OutboundMessage(render(node.prompt, variables, env), _buttons(node))
        return Transition(node.id, variables, 0, REPLY, Status.RUNNING, outbound=prompt)
    if isinstance(node, HttpNode):
        call = HttpCall(
            url=render_url(node.url, variables, env),
            body={name: variables.get(name) for name in node.send},
            headers={k: render(v, variables, env) for k, v in node.headers.items()},
            result_var=node.result_var,
            timeout_seconds=node.timeout_seconds,
        )
        return Transition(node.id, variables, 0, None, Status.RUNNING, http=call)
    if isinstance(node, EndNode):
        final = OutboundMessage(render(node.text, variables, env)) if node.text else None
        return Transition(node.id, variables, 0, None, Status.COMPLETED, outbound=final)
    raise TypeError(f"unknown node type {type(node).__name__}")


def after_http(campaign: Campaign, snapshot: Snapshot, result: Any) -> Transition:
    """The transition of an http node once its call returned ``result``."""
    node = campaign.node(snapshot.current_node)
    assert isinstance(node, HttpNode)
    variables = dict(snapshot.variables)
    if node.result_var:
        variables[node.result_var] = result
    return _moved_to(campaign, snapshot, variables)


def _buttons(node: AskNode) -> tuple[tuple[str, str], ...]:
    if node.validation != "choices":
        return ()
    return tuple((choice.id, choice.title) for choice in node.choices)


def _consume_reply(
    campaign: Campaign, snapshot: Snapshot, reply: Reply, env: Mapping[str, str]
) -> Transition:
    node = campaign.node(snapshot.current_node)
    assert isinstance(node, AskNode), "only ask nodes wait for a reply"
    check = check_answer(node, reply.text, reply.reply_id)
    variables = dict(snapshot.variables)
    if check.valid:
        variables[node.var] = check.value
        return replace(
            _moved_to(campaign, snapshot, variables), consumed_message_id=reply.message_id
        )
    attempts = snapshot.attempts + 1
    if attempts >= node.max_attempts:
        moved = _moved_to(campaign, snapshot, variables, outcome="invalid")
        return replace(moved, consumed_message_id=reply.message_id)
    retry = OutboundMessage(render(node.retry, variables, env), _buttons(node))
    return Transition(
        node.id,
        variables,
        attempts,
        REPLY,
        Status.RUNNING,
        consumed_message_id=reply.message_id,
        outbound=retry,
    )
