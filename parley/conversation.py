"""The conversation state machine: what one step does, decided without any I/O.

A step is one unit of progress with at most one side effect: send a node's message, call a
node's HTTP endpoint, or consume one inbound reply. Keeping it to one effect per step is what
lets the step counter name every side effect (``conv:{id}:step:{n}``) so a replay after a crash
finds the effect it already had instead of causing it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from parley.campaign import (
    AskNode,
    Campaign,
    EndNode,
    HttpNode,
    Outcome,
    SendNode,
    check_answer,
    render,
)

Status = Literal["pending", "running", "hot", "suspended", "completed", "failed", "cancelled"]
ACTIVE: frozenset[str] = frozenset({"pending", "running", "hot", "suspended"})
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
WAITING_FOR_REPLY = "reply"


@dataclass(frozen=True)
class Cursor:
    """Where a conversation stands: the only thing a flow carries between steps (rule 5)."""

    conversation_id: int
    step: int
    status: str
    waiting_for: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def awaiting_reply(self) -> bool:
        return self.active and self.waiting_for == WAITING_FOR_REPLY


@dataclass(frozen=True)
class Snapshot:
    current_node: str
    variables: Mapping[str, Any]
    attempts: int
    waiting_for: str | None


@dataclass(frozen=True)
class Reply:
    message_id: int
    text: str | None
    reply_id: str | None


@dataclass(frozen=True)
class Outbound:
    text: str
    buttons: tuple[tuple[str, str], ...] = ()

    def payload(self) -> dict[str, Any]:
        if self.buttons:
            return {"type": "interactive", "buttons": [list(b) for b in self.buttons]}
        return {"type": "text"}


@dataclass(frozen=True)
class HttpCall:
    url: str
    body: dict[str, Any]
    result_var: str | None
    timeout_seconds: float


@dataclass(frozen=True)
class Transition:
    """The new state after a step plus the one effect that step performs."""

    current_node: str
    variables: dict[str, Any]
    attempts: int
    waiting_for: str | None
    status: str
    consumed_message_id: int | None = None
    outbound: Outbound | None = None
    http: HttpCall | None = None
    notes: list[str] = field(default_factory=list)


def plan_step(campaign: Campaign, snapshot: Snapshot, reply: Reply | None) -> Transition:
    if snapshot.waiting_for == WAITING_FOR_REPLY:
        if reply is None:
            raise ValueError("a step that waits for a reply needs one")
        return _consume_reply(campaign, snapshot, reply)
    return _execute_node(campaign, snapshot)


def _moved_to(
    campaign: Campaign, snapshot: Snapshot, variables: dict[str, Any], outcome: Outcome = "ok"
) -> Transition:
    target = campaign.next_node(snapshot.current_node, variables, outcome=outcome)
    if target is None:
        return Transition(snapshot.current_node, variables, 0, None, "completed")
    return Transition(target, variables, 0, None, "running")


def _execute_node(campaign: Campaign, snapshot: Snapshot) -> Transition:
    node = campaign.node(snapshot.current_node)
    variables = dict(snapshot.variables)
    if isinstance(node, SendNode):
        moved = _moved_to(campaign, snapshot, variables)
        return replace(moved, outbound=Outbound(render(node.text, variables)))
    if isinstance(node, AskNode):
        prompt = Outbound(render(node.prompt, variables), _buttons(node))
        return Transition(node.id, variables, 0, WAITING_FOR_REPLY, "running", outbound=prompt)
    if isinstance(node, HttpNode):
        call = HttpCall(
            url=render(node.url, variables),
            body={name: variables.get(name) for name in node.send},
            result_var=node.result_var,
            timeout_seconds=node.timeout_seconds,
        )
        return Transition(node.id, variables, 0, None, "running", http=call)
    if isinstance(node, EndNode):
        final = Outbound(render(node.text, variables)) if node.text else None
        return Transition(node.id, variables, 0, None, "completed", outbound=final)
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


def _consume_reply(campaign: Campaign, snapshot: Snapshot, reply: Reply) -> Transition:
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
    retry = Outbound(render(node.retry, variables), _buttons(node))
    return Transition(
        node.id,
        variables,
        attempts,
        WAITING_FOR_REPLY,
        "running",
        consumed_message_id=reply.message_id,
        outbound=retry,
    )
