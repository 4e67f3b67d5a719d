"""The conversation state machine: the transitions allowed between statuses (the statuses and
wait kinds themselves are words of ``parley.vocabulary``), why and until when a conversation
waits, and what one step decides (``Transition``).

A step is one unit of progress with at most one side effect: send a node's message, call a
node's HTTP endpoint, or consume one inbound reply. Keeping it to one effect per step is what
lets the step counter name every side effect (``conv:{id}:step:{n}``) so a replay after a crash
finds the effect it already had instead of causing it again. ``planner`` decides the steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from parley.campaign.conditions import LeadFacts
from parley.channels.base import OutboundMessage
from parley.errors import TransitionNotAllowed
from parley.vocabulary import ACTIVE, Status, WaitKind

_ENDS = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.PAUSED}) | _ENDS,
    Status.RUNNING: frozenset({Status.RUNNING, Status.HOT, Status.SUSPENDED, Status.PAUSED})
    | _ENDS,
    Status.HOT: frozenset({Status.RUNNING, Status.SUSPENDED, Status.PAUSED}) | _ENDS,
    Status.SUSPENDED: frozenset({Status.RUNNING, Status.PAUSED}) | _ENDS,
    # pending: held before its first run started, released to have it started
    Status.PAUSED: frozenset({Status.PAUSED, Status.PENDING, Status.SUSPENDED, Status.RUNNING})
    | _ENDS,
    Status.FAILED: frozenset({Status.PENDING}),  # retry: a new run from the node that failed
    Status.COMPLETED: frozenset(),
    Status.CANCELLED: frozenset(),
}
"""Every status change allowed, and the only place that says so: ``check_transition`` guards
each one (the runner's and the operators'), so "resume a completed conversation" is refused."""


def check_transition(current: Status, new: Status, conversation_id: int | None = None) -> None:
    if new not in TRANSITIONS[current]:
        subject = f"conversation {conversation_id}" if conversation_id is not None else "it"
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it has ended)"
        raise TransitionNotAllowed(
            f"{subject} is {current.value}: it cannot become {new.value} (allowed: {allowed})"
        )


@dataclass(frozen=True)
class Wait:
    """Why a conversation waits, and until when (``None``: for as long as it takes)."""

    kind: WaitKind
    until: datetime | None = None


REPLY = Wait(WaitKind.REPLY)
OPERATOR = Wait(WaitKind.OPERATOR)


def suspend_key(step: int, sleeps: int) -> str:
    """Prefect's key for one suspend: a repeated key would return the input already given, and
    anything but lowercase letters, digits and dashes fails after the run is marked suspended."""
    return f"wait-{step}-{sleeps}"


@dataclass(frozen=True)
class Cursor:
    """Where a conversation stands: the only thing a flow carries between steps (rule 5 of
    docs/architecture.md)."""

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
    """What the planner may look at: the row's compact state, the time, the contact's fields.

    ``entered_at`` is when the conversation entered the node and ``now`` the decision's instant
    (``None``: both the same, for tests of graphs without timers). ``node_done`` says the node's
    own work (send, prompt, call) is done and it only waits to be left; ``follow_up`` that a
    timer brought the conversation here, so a reply stored before its message went out wins.
    """

    current_node: str
    variables: Mapping[str, Any]
    attempts: int
    wait: Wait | None
    node_done: bool = False
    entered_at: datetime | None = None
    now: datetime | None = None
    follow_up: bool = False
    task_result: Mapping[str, Any] | None = None
    contact: Mapping[str, Any] = field(default_factory=dict)
    last_heard_at: datetime | None = None
    lead: LeadFacts = field(default_factory=LeadFacts)


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
class ActionIntent:
    """An outreach action a send node queues for its identity's dispatcher (rendered now)."""

    type: str
    text: str
    subject: str | None = None
    template: str | None = None
    file: str | None = None  # an attachment's or voice message's URL
    post: str | None = None  # the URL of the post to like


@dataclass(frozen=True)
class Placement:
    """An ``add_to_campaign`` node's work: start the lead in ``campaign`` as ``identity_id``
    (None: this conversation's identity), in the same transaction as the step."""

    campaign: str
    identity_id: int | None = None


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
    action: ActionIntent | None = None  # queued with the state change; the run waits for it
    placement: Placement | None = None  # started with the state change; its outcome is next
    error: str | None = None  # why the conversation failed, or why it took an error edge
    entered: bool = False  # it moved to ``current_node``: a new visit, timers count from now
    node_done: bool = False
    follow_up: bool = False
    task_result: Mapping[str, Any] | None = None
