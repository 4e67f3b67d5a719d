"""The campaign graph: the nodes a conversation visits (``nodes``) and the edges between them.

Leaving a node is decided here, purely, so the planner never re-implements it: ``next_edge`` says
which edge a conversation takes in a given situation (``EdgeContext``), ``next_deadline`` when
the clock alone could change that answer, and ``departure_triggers`` what the conversation waits
for at a node. How nodes fit together is checked in ``checks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, PrivateAttr, field_validator

from parley.campaign.conditions import (
    OUTCOME_WHENS,
    WHEN_NO_REPLY,
    WHEN_REPLIED,
    Condition,
    EdgeContext,
    NotAlreadyContactedCondition,
    Outcome,
    TimePassedCondition,
)
from parley.campaign.durations import Duration, parse_zone
from parley.campaign.names import EnvName, NodeId, Slug, VariableName
from parley.campaign.nodes import (
    DEFAULT_RETRY,
    AddToCampaignNode,
    AskNode,
    BranchNode,
    BundleNode,
    Choice,
    EndNode,
    HttpNode,
    Node,
    SendNode,
    SetNode,
    TaskNode,
    Validation,
    WaitForReplyNode,
    WaitNode,
    _Strict,
)
from parley.errors import NotFound

__all__ = [  # the nodes are re-exported: callers import them from here as before
    "DEFAULT_RETRY",
    "AddToCampaignNode",
    "AskNode",
    "BranchNode",
    "BundleNode",
    "Campaign",
    "Choice",
    "Edge",
    "EndNode",
    "HttpNode",
    "InactivityTimeout",
    "Node",
    "Outcome",
    "SendNode",
    "SetNode",
    "TaskNode",
    "Trigger",
    "Validation",
    "WaitForReplyNode",
    "WaitNode",
    "queues_actions",
    "sleeps_on_timer",
]

Trigger = Literal["reply", "time", "task"]
"""What can move a waiting conversation on: a message, the clock, a person completing a task."""

DEFAULT_TIMEZONE: Final = "UTC"
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


class Edge(_Strict):
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    when: Condition | None = None

    @property
    def on_outcome(self) -> bool:
        """An ``invalid``, ``error`` or ``taken_over`` edge: only taken when the node ended
        that way."""
        return isinstance(self.when, str) and self.when in OUTCOME_WHENS

    @property
    def waits_for_reply(self) -> bool:
        """A ``when: replied`` edge: taken when the contact writes while the node waits."""
        return self.when == WHEN_REPLIED

    @property
    def waits_for_time(self) -> bool:
        """A ``time_passed`` or ``no_reply`` edge: the clock makes it true."""
        return self.when == WHEN_NO_REPLY or isinstance(self.when, TimePassedCondition)

    @property
    def interrupts(self) -> bool:
        """Whether the edge may be taken while its node still waits (see ``Node.waiting``)."""
        return self.waits_for_reply or self.waits_for_time

    def applies(self, variables: Mapping[str, object], outcome: Outcome) -> bool:
        """Whether a conversation leaving ``source`` with this outcome may follow the edge,
        judged without a clock or a reply (what ``Campaign.next_node`` has always done).

        Outcomes never share edges, so a failed ask cannot slip through a catch-all edge meant
        for valid answers, nor a failed http call through the edge meant for its success.
        """
        if isinstance(self.when, str):
            return outcome == self.when
        if outcome != "ok":
            return False
        if self.when is None:
            return True
        return self.when.matches(EdgeContext(entered_at=_EPOCH, now=_EPOCH, variables=variables))

    def matches(self, ctx: EdgeContext, source: Node) -> bool:
        """Whether the edge's condition holds in ``ctx`` for a conversation at ``source``.

        This judges the condition only; whether the node still waits (and so only interrupting
        edges apply) is ``Campaign.next_edge``'s part.
        """
        when = self.when
        if ctx.outcome != "ok" or self.on_outcome:
            return when == ctx.outcome
        if when is None:
            return True
        if when == WHEN_REPLIED:
            return ctx.replied
        if isinstance(when, str):  # no_reply
            due = self.due(ctx, source)
            return due is not None and ctx.now >= due
        return when.matches(ctx)

    def due(self, ctx: EdgeContext, source: Node) -> datetime | None:
        """When the clock makes the edge's condition true; ``None`` if the clock never does."""
        if isinstance(self.when, TimePassedCondition):
            return self.when.due(ctx)
        if self.when == WHEN_NO_REPLY and isinstance(source, WaitForReplyNode):
            return None if ctx.replied else source.reply_deadline(ctx.entered_at)
        return None


class InactivityTimeout(_Strict):
    """``{after: 48h, text: "..."}``: close a conversation the contact left waiting that long."""

    after: Duration
    text: str = Field(min_length=1)


DEFAULT_STOP_KEYWORDS: Final = ("STOP", "unsubscribe", "baja", "abmelden")
DEFAULT_STOP_CONFIRMATION: Final = "Done: you will not receive any more messages from us."


def stop_word(text: str) -> str:
    """A text as stop keywords are compared: case-folded, punctuation dropped, spaces single."""
    kept = "".join(ch if ch.isalnum() else " " for ch in text.casefold())
    return " ".join(kept.split())


class Campaign(_Strict):
    """A campaign graph. Use ``parse_campaign``/``load_campaign``: they also check the graph."""

    name: Slug
    version: int = Field(default=1, ge=1)
    description: str = ""
    channel: str = "whatsapp"
    env: dict[EnvName, str] = Field(default_factory=dict)
    error_text: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    on_reply: NodeId | None = None
    # Variables a conversation starts with: an outreach lead's fields (``first_name``,
    # ``company``), given when it is started (``parley conversations start --var``).
    inputs: list[VariableName] = Field(default_factory=list)
    inactivity_timeout: InactivityTimeout | None = None
    # Inbound texts that mean "stop contacting me", compared without case, spacing or
    # punctuation: the contact's address is suppressed and the conversation ends, with
    # ``stop_confirmation`` sent back where the channel allows it (WhatsApp; "" sends none).
    stop_keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_STOP_KEYWORDS))
    stop_confirmation: str = Field(default=DEFAULT_STOP_CONFIRMATION, max_length=1024)
    start: str
    nodes: list[Node]
    edges: list[Edge]

    _nodes_by_id: dict[str, Node] = PrivateAttr(default_factory=dict)
    _edges_by_source: dict[str, list[Edge]] = PrivateAttr(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, timezone: str) -> str:
        parse_zone(timezone)
        return timezone

    @field_validator("stop_keywords")
    @classmethod
    def _usable_stop_keywords(cls, keywords: list[str]) -> list[str]:
        for keyword in keywords:
            if not stop_word(keyword):
                raise ValueError(f"stop keyword {keyword!r} has no letter or digit")
        return keywords

    def is_stop(self, text: str | None) -> bool:
        """Whether an inbound text is one of the campaign's stop keywords, as a whole."""
        said = stop_word(text or "")
        return bool(said) and said in {stop_word(k) for k in self.stop_keywords}

    def model_post_init(self, context: Any, /) -> None:
        self._nodes_by_id = {node.id: node for node in self.nodes}
        for edge in self.edges:
            self._edges_by_source.setdefault(edge.source, []).append(edge)

    @property
    def asks_contact_history(self) -> bool:
        """Whether an edge asks ``not_already_contacted``: only then does the runner look up
        the lead's other conversations before a step (``LeadFacts.last_contacted_at``)."""
        return any(isinstance(edge.when, NotAlreadyContactedCondition) for edge in self.edges)

    def node(self, node_id: str) -> Node:
        try:
            return self._nodes_by_id[node_id]
        except KeyError:
            raise NotFound(
                f"campaign {self.name!r} v{self.version} has no node {node_id!r}"
            ) from None

    def edges_from(self, node_id: str) -> list[Edge]:
        """The node's outgoing edges in file order (the order they are tried in)."""
        self.node(node_id)
        return list(self._edges_by_source.get(node_id, []))

    def next_node(
        self,
        node_id: str,
        variables: Mapping[str, object],
        *,
        outcome: Outcome = "ok",
    ) -> str | None:
        """The first matching edge's target, in file order; None ends the conversation.

        Judged without a clock or a reply: time, reply and task conditions never match here;
        use ``next_edge`` for those. An unknown ``node_id`` raises ``NotFound`` rather than
        ending the conversation quietly.
        """
        edges = self.edges_from(node_id)
        return next((edge.target for edge in edges if edge.applies(variables, outcome)), None)

    @property
    def zone(self) -> ZoneInfo:
        """The campaign's default timezone (``timezone:``, UTC unless set)."""
        return parse_zone(self.timezone)

    def zone_for(self, contact: Mapping[str, object]) -> ZoneInfo:
        """The contact's own ``timezone`` field when it names a real zone, else the campaign's:
        a contact record with a typo must not stop the conversation."""
        name = contact.get("timezone")
        if isinstance(name, str):
            try:
                return parse_zone(name)
            except ValueError:
                pass
        return self.zone

    def is_waiting(self, node_id: str, ctx: EdgeContext) -> bool:
        """Whether the node still waits in ``ctx`` (delay, wait, answer, reply or result)."""
        return self.node(node_id).waiting(ctx, self.zone_for(ctx.contact))

    def next_edge(self, node_id: str, ctx: EdgeContext) -> Edge | None:
        """The edge a conversation at ``node_id`` takes now, or ``None`` to stay (or end, when
        ``next_deadline`` is ``None`` and ``departure_triggers`` is empty).

        With ``ctx.outcome`` ``invalid``/``error``/``taken_over`` only that outcome's edges
        count (the planner falls back to the normal edges for ``taken_over``). Otherwise
        the first edge in file order whose condition matches, except that while the node still
        waits (``is_waiting``) only interrupting edges (``replied``, ``no_reply``,
        ``time_passed``) are considered: an ask's catch-all edge is for its answer, not for
        the moment it was asked.
        """
        node = self.node(node_id)
        edges = self._edges_by_source.get(node_id, [])
        if ctx.outcome != "ok":
            return next((edge for edge in edges if edge.when == ctx.outcome), None)
        waiting = node.waiting(ctx, self.zone_for(ctx.contact))
        return next(
            (
                edge
                for edge in edges
                if not edge.on_outcome
                and (edge.interrupts or not waiting)
                and edge.matches(ctx, node)
            ),
            None,
        )

    def next_deadline(self, node_id: str, ctx: EdgeContext) -> datetime | None:
        """The earliest instant after ``ctx.now`` at which the clock alone changes what happens
        at the node, in UTC; ``None`` if only a reply, a task result or nothing can.

        Those instants are: a ``time_passed`` edge coming true, a wait_for_reply's timeout
        (its ``no_reply`` edges, unless a reply arrived), a wait node's wake-up time, and the end
        of a node's ``delay`` (when the node's own work is due: the planner does it then, before
        asking ``next_edge``).
        """
        node = self.node(node_id)
        if ctx.outcome != "ok":
            return None
        instants = [node.wake_at(ctx.entered_at, self.zone_for(ctx.contact))]
        for edge in self._edges_by_source.get(node_id, []):
            if not edge.on_outcome:
                instants.append(edge.due(ctx, node))
        return min((at for at in instants if at is not None and at > ctx.now), default=None)

    def departure_triggers(self, node_id: str) -> frozenset[Trigger]:
        """What can move a conversation on from this node after its work is done: ``reply``
        (an answer, a ``replied`` edge, an ``on_reply`` jump), ``time`` (a delay, a wait,
        a ``time_passed`` or ``no_reply`` edge), ``task`` (someone completing it). Empty: the
        node is left straight away, or the conversation ends there."""
        node = self.node(node_id)
        edges = self._edges_by_source.get(node_id, [])
        triggers: set[Trigger] = set()
        if isinstance(node, AskNode | WaitForReplyNode) or any(e.waits_for_reply for e in edges):
            triggers.add("reply")
        if self.on_reply_from(node_id) is not None:
            triggers.add("reply")
        if isinstance(node, WaitNode) or node.delay or any(e.waits_for_time for e in edges):
            triggers.add("time")
        if isinstance(node, TaskNode):
            triggers.add("task")
        return frozenset(triggers)

    def inactive_at(
        self, node_id: str, ctx: EdgeContext, last_heard_at: datetime | None = None
    ) -> datetime | None:
        """When ``inactivity_timeout`` closes the conversation (sending its ``text``): ``after``
        past the later of entering the node and the contact's last message, while the node
        waits for the contact (an ask or a wait_for_reply). ``None`` when it does not apply."""
        node = self.node(node_id)
        if self.inactivity_timeout is None or not isinstance(node, AskNode | WaitForReplyNode):
            return None
        since = ctx.entered_at if last_heard_at is None else max(ctx.entered_at, last_heard_at)
        return since + self.inactivity_timeout.after

    def on_reply_from(self, node_id: str) -> str | None:
        """Where a message from the contact goes while the conversation sleeps on a timer at
        this node: the campaign's ``on_reply``, unless the node has its own ``replied`` edge
        (then ``next_edge`` with ``replied=True`` takes it) or does not sleep on a timer."""
        edges = self._edges_by_source.get(node_id, [])
        if self.on_reply is None or any(edge.waits_for_reply for edge in edges):
            return None
        return self.on_reply if sleeps_on_timer(self.node(node_id), edges) else None


def sleeps_on_timer(node: Node, edges: list[Edge]) -> bool:
    """Whether a conversation may sleep at ``node`` waiting for the clock alone: a wait, a delay,
    or a ``time_passed`` edge on a node that does not wait for a reply or a person anyway — or
    for its identity's dispatcher (an outreach action, which may wait days for working hours).
    A wait_for_reply never does: any message is the reply it waits for, even during its delay."""
    if isinstance(node, WaitForReplyNode):
        return False
    if queues_actions(node):
        return True
    if isinstance(node, WaitNode) or node.delay:
        return True
    if isinstance(node, AskNode | TaskNode):
        return False
    return any(isinstance(edge.when, TimePassedCondition) for edge in edges)


def queues_actions(node: Node) -> bool:
    """A node whose work is queued for the identity's dispatcher: a send node with an
    ``action``, or a bundle; the conversation waits for each action's outcome."""
    return isinstance(node, BundleNode) or (isinstance(node, SendNode) and node.action is not None)
