"""Checks on how a conversation moves: loops that never pause, nodes where it could stop
silently, and conditions on edges that can never be judged where they stand."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from parley.campaign.conditions import (
    WHEN_INVALID,
    WHEN_NO_REPLY,
    WHEN_REPLIED,
    WHEN_TAKEN_OVER,
    Comparison,
    ConnectionAcceptedCondition,
    EqualsCondition,
    ExistsCondition,
    NotEqualsCondition,
    TaskResultCondition,
    TimePassedCondition,
    lead_condition_answers,
)
from parley.campaign.draft import Draft, Problem
from parley.campaign.durations import format_duration
from parley.campaign.graph import Arc, FlowGraph, cycle_through, reach
from parley.campaign.model import (
    AddToCampaignNode,
    AskNode,
    BundleNode,
    Edge,
    EndNode,
    Node,
    SendNode,
    TaskNode,
    WaitForReplyNode,
    WaitNode,
    queues_actions,
)

_DEFAULT_EDGE = (
    "a default edge (an edge without 'when') so a conversation never stops here silently"
)


def spinning_cycles(draft: Draft) -> Iterator[Problem]:
    """A loop in which nothing waits would run for ever (and send for ever) in one go."""
    graph = FlowGraph(draft)

    def calm(node_id: str) -> list[str]:
        return [arc.target for arc in graph.out(node_id) if _calm(graph, arc)]

    reported: set[str] = set()
    for node_id in dict.fromkeys(draft.node_ids):
        if node_id in reported or graph.waits(node_id):
            continue
        cycle = cycle_through(node_id, calm)
        if cycle is None:
            continue
        reported |= {other for other in reach([node_id], calm) if node_id in reach([other], calm)}
        yield (
            node_id,
            f"the loop {' -> '.join(cycle)} never waits, so a conversation would go round it "
            "for ever: add a delay, a wait, an ask, a wait_for_reply or a task to it, or a "
            "time_passed or replied condition on one of its edges",
        )


def _calm(graph: FlowGraph, arc: Arc) -> bool:
    """An arc taken without waiting, between nodes that do not wait. Edges that can never be
    taken (from an end node, ``invalid`` off an ask) are reported elsewhere and form no loop."""
    edge = arc.edge
    if edge is None or edge.interrupts:
        return False
    if isinstance(edge.when, TaskResultCondition) and isinstance(
        graph.nodes.get(arc.source), TaskNode
    ):
        return False  # a person completes the task: it waits (add_to_campaign's does not)
    if edge.when == WHEN_INVALID or graph.waits(arc.target):
        return False
    return not isinstance(graph.nodes.get(arc.source), EndNode)


def missing_default_edges(draft: Draft) -> Iterator[Problem]:
    """A node whose edges may all fail to match would leave the conversation stuck, silently."""
    graph = FlowGraph(draft)
    for node_id, node in graph.nodes.items():
        edges = graph.edges_from(node_id)
        if isinstance(node, EndNode) or edges is None:
            continue
        normal = [edge for edge in edges if not edge.on_outcome]
        if normal:  # no edge at all is a dead end, reported on its own
            message = _uncovered(node, normal)
            if message is not None:
                yield node_id, message


def _uncovered(node: Node, edges: Sequence[Edge]) -> str | None:
    whens = [edge.when for edge in edges]
    if any(when is None or isinstance(when, TimePassedCondition) for when in whens):
        return None  # always matches, or will once the time has passed
    if isinstance(node, WaitForReplyNode):
        return _reply_uncovered(node, whens)
    if isinstance(node, TaskNode | AddToCampaignNode):
        return _task_uncovered(node, whens)
    if _complementary(whens) or _answer_tested(node, whens):
        return None
    return f"{node.type} node {node.id!r} needs {_DEFAULT_EDGE}"


def _reply_uncovered(node: WaitForReplyNode, whens: Sequence[object]) -> str | None:
    missing = []
    if WHEN_REPLIED not in whens and not _complementary(whens):
        missing.append("a 'when: replied' edge")
    if WHEN_NO_REPLY not in whens:
        missing.append(
            f"a 'when: no_reply' edge (taken when no reply comes within "
            f"{format_duration(node.timeout)})"
        )
    if not missing:
        return None
    return f"wait_for_reply node {node.id!r} needs {' and '.join(missing)}, or {_DEFAULT_EDGE}"


def _task_uncovered(node: TaskNode | AddToCampaignNode, whens: Sequence[object]) -> str | None:
    handled = {
        when.task_result.casefold() for when in whens if isinstance(when, TaskResultCondition)
    }
    missing = [outcome for outcome in node.outcomes if outcome.casefold() not in handled]
    if not missing or _complementary(whens):
        return None
    return (
        f"{node.type} node {node.id!r} needs an edge for outcome "
        f"{', '.join(map(repr, missing))} "
        f"(when: {{task_result: {missing[0]}}}) or {_DEFAULT_EDGE}"
    )


def _complementary(whens: Sequence[object]) -> bool:
    """Two conditions that are each other's negation, so one of them always matches:
    ``exists: true``/``false``, or ``equals: X``/``not_equals: X``, on the same subject."""
    answers = lead_condition_answers(whens)
    if any((word, not expected) in answers for word, expected in answers):
        return True  # has_email and {has_email: false}
    tests = [when for when in whens if isinstance(when, Comparison)]
    exists = {(t.subject, t.exists) for t in tests if isinstance(t, ExistsCondition)}
    if any((subject, not flag) in exists for subject, flag in exists):
        return True
    equals = {
        (t.subject, t.equals.strip().casefold()) for t in tests if isinstance(t, EqualsCondition)
    }
    return any(
        (t.subject, t.not_equals.strip().casefold()) in equals
        for t in tests
        if isinstance(t, NotEqualsCondition)
    )


def _answer_tested(node: Node, whens: Sequence[object]) -> bool:
    """``exists: true`` on an ask's own variable: a valid answer is never empty."""
    return isinstance(node, AskNode) and any(
        isinstance(when, ExistsCondition) and when.exists and when.var == node.var for when in whens
    )


def misplaced_conditions(draft: Draft) -> Iterator[Problem]:
    """``replied``, ``no_reply``, ``task_result`` and ``taken_over`` only mean something on
    some nodes."""
    nodes = draft.parsed()
    for index, edge in sorted(draft.edges.items()):
        node = nodes.get(edge.source)  # None: unknown or unparsed, reported elsewhere
        message = None if node is None else _placement(edge, node)
        if message is not None:
            yield edge.source, f"edges[{index}]: {message}"


def _placement(edge: Edge, node: Node) -> str | None:
    when = edge.when
    if when == WHEN_REPLIED and not _hears_replies(node):
        why = "its reply is its answer" if isinstance(node, AskNode) else "it does not wait"
        return (
            f"'when: {WHEN_REPLIED}' only applies to edges leaving a wait_for_reply or wait node "
            f"or a node with a 'delay', and {node.id!r} is a {node.type} node ({why})"
        )
    if when == WHEN_NO_REPLY and not isinstance(node, WaitForReplyNode):
        return (
            f"'when: {WHEN_NO_REPLY}' only applies to edges leaving a wait_for_reply node, and "
            f"{node.id!r} is a {node.type} node; use 'when: {{time_passed: 2d}}' elsewhere"
        )
    if isinstance(when, TaskResultCondition):
        return _task_result_placement(when, node)
    if isinstance(when, ConnectionAcceptedCondition) and isinstance(node, WaitForReplyNode):
        return (
            f"'when: connection_accepted' on wait_for_reply node {node.id!r} is only judged "
            "once a reply came: wait for an acceptance on a branch node instead, with a "
            "'time_passed' edge as its timeout (a reply there takes the campaign's on_reply)"
        )
    if when == WHEN_TAKEN_OVER and not queues_actions(node):
        return (
            f"'when: {WHEN_TAKEN_OVER}' only applies to edges leaving a send node with an "
            f"'action' or a bundle (a manual send takes over the action it waits for), and "
            f"{node.id!r} is a {node.type} node"
            + (" without one" if isinstance(node, SendNode) else "")
        )
    return None


def unreachable_connections(draft: Draft) -> Iterator[Problem]:
    """``connection_accepted`` only ever comes true for a lead of a LinkedIn seat who was sent
    an invitation: on a campaign that neither talks on LinkedIn nor sends one, it waits for
    nothing."""
    nodes = draft.parsed()
    if draft.channel == "linkedin" or any(_invites(node) for node in nodes.values()):
        return
    for index, edge in sorted(draft.edges.items()):
        if isinstance(edge.when, ConnectionAcceptedCondition) and edge.when.expected:
            yield (
                edge.source,
                f"edges[{index}]: 'when: connection_accepted' can never be true: the campaign's "
                f"channel is {draft.channel} and no node sends a linkedin_connection",
            )


def _invites(node: Node) -> bool:
    if isinstance(node, BundleNode):
        return any(member.action == "linkedin_connection" for member in node.actions)
    return isinstance(node, SendNode) and node.action == "linkedin_connection"


def _hears_replies(node: Node) -> bool:
    if isinstance(node, WaitForReplyNode | WaitNode):
        return True
    return node.delay is not None and not isinstance(node, AskNode)


def _task_result_placement(when: TaskResultCondition, node: Node) -> str | None:
    if not isinstance(node, TaskNode | AddToCampaignNode):
        return (
            f"'task_result' only applies to edges leaving a task or add_to_campaign node, and "
            f"{node.id!r} is a {node.type} node"
        )
    if when.task_result.casefold() in {outcome.casefold() for outcome in node.outcomes}:
        return None
    return (
        f"'task_result: {when.task_result}' is not an outcome of {node.type} {node.id!r}; its "
        f"outcomes are {', '.join(map(repr, node.outcomes))}"
    )


def on_reply_target(draft: Draft) -> Iterator[Problem]:
    """``on_reply`` must name a node, and some node must be able to jump there."""
    if draft.on_reply is None:
        return
    if draft.on_reply not in draft.node_ids:
        yield None, f"on_reply {draft.on_reply!r} is not a node"
        return
    graph = FlowGraph(draft)
    if not any(arc.jump for node_id in draft.node_ids for arc in graph.out(node_id)):
        yield (
            None,
            f"on_reply {draft.on_reply!r} is never used: a reply jumps there only while a "
            "conversation sleeps on a timer (a wait, a delay or a time_passed edge without "
            "its own 'when: replied' edge), and no node does",
        )
