"""Variables read before they are set: a must-be-set analysis over the paths from start.

A template, an http ``send`` list, a ``set`` expression or an edge condition that reads a
variable needs it set on *every* path from ``start`` to where it is read, or it reads nothing
(a template renders it empty, a condition never matches, an expression fails). What a node sets
depends on how it is left: an ask sets its ``var`` with a valid answer, not on ``when: invalid``;
an http node sets ``result_var`` unless it failed; a wait_for_reply sets ``var`` only when a
reply came; a reply jumping to ``on_reply`` leaves before the node did anything. An edge whose
condition only matches a set variable (``{var: x, equals: ...}``, ``{var: x, exists: true}``)
guarantees it along that edge, so ``exists`` is how an author guards an optional variable.
``exists`` tests themselves may read unset variables, but not ones no node sets at all: those
are typos.
"""

from __future__ import annotations

from collections.abc import Iterator

from parley.campaign.conditions import (
    OUTCOME_WHENS,
    WHEN_NO_REPLY,
    WHEN_REPLIED,
    Comparison,
    ExistsCondition,
    TimePassedCondition,
)
from parley.campaign.draft import Draft, Problem
from parley.campaign.graph import Arc, FlowGraph, path_to
from parley.campaign.model import Edge, Node, WaitForReplyNode

_SETTER_TYPES = ("ask", "http", "wait_for_reply", "task", "set")


def unassigned_variables(draft: Draft) -> Iterator[Problem]:
    paths = _UnsetPaths(FlowGraph(draft))
    nowhere = f"no {_setter_kinds(draft)} node sets it"
    for node in draft.nodes:
        for field, name in node.variables_read():
            if name not in draft.assigned:
                yield node.id, f"{field} uses variable {name!r}, but {nowhere}"
            elif (route := paths.unset_route(name, node.id)) is not None:
                yield node.id, f"{field} uses variable {name!r}, but {_not_on_every_path(route)}"
    for index, edge in sorted(draft.edges.items()):
        yield from _condition_problems(index, edge, paths, draft.assigned, nowhere)


def _condition_problems(
    index: int, edge: Edge, paths: _UnsetPaths, assigned: frozenset[str], nowhere: str
) -> Iterator[Problem]:
    when = edge.when
    if not isinstance(when, Comparison) or when.var is None:
        return
    label = f"edges[{index}]: condition uses variable {when.var!r}"
    if when.var not in assigned:
        yield edge.source, f"{label}, but {nowhere}"
        return
    if isinstance(when, ExistsCondition):
        return  # testing whether it is set is what exists is for
    if when.var in paths.sets_on_leaving(edge.source, edge):
        return
    route = paths.unset_route(when.var, edge.source)
    if route is not None:
        yield (
            edge.source,
            f"{label}, but {_not_on_every_path(route)}; or test it with 'exists' first",
        )


def _not_on_every_path(route: list[str]) -> str:
    where = route[-1]
    if len(route) == 1:
        return f"it is not set yet when a conversation starts at {where!r}; set it before"
    return (
        f"it is not set on every path from start to {where!r} (not along "
        f"{' -> '.join(route)}); set it on every path before"
    )


def _setter_kinds(draft: Draft) -> str:
    present = {node.type for node in draft.nodes} | {raw.type for raw in draft.raw_nodes}
    kinds = [kind for kind in _SETTER_TYPES if kind in ("ask", "http") or kind in present]
    return " or ".join(kinds) if len(kinds) == 2 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"


def sets_leaving(node: Node, edge: Edge) -> frozenset[str]:
    """What ``node`` has set when a conversation leaves it along ``edge`` (guards excluded)."""
    when = edge.when
    if isinstance(when, TimePassedCondition) or when in (*OUTCOME_WHENS, WHEN_NO_REPLY):
        return frozenset()  # left before (or instead of) finishing its work
    if when == WHEN_REPLIED and not isinstance(node, WaitForReplyNode):
        return frozenset()  # a reply interrupted its delay or wait
    return frozenset(node.assigned())


def guarded(edge: Edge) -> frozenset[str]:
    """A variable the edge's condition guarantees is set whenever the edge is taken."""
    when = edge.when
    if isinstance(when, Comparison) and when.var is not None and when.requires_value:
        return frozenset({when.var})
    return frozenset()


class _UnsetPaths:
    """Answers "can a conversation reach this node with that variable unset?" with a route."""

    def __init__(self, graph: FlowGraph) -> None:
        self.graph = graph
        self._reachable = graph.reachable()

    def unset_route(self, name: str, node_id: str) -> list[str] | None:
        start = self.graph.draft.start
        if start is None or node_id not in self._reachable:
            return None  # unreachable nodes and unknown starts are reported on their own
        if name in self.graph.draft.inputs:
            return None  # given when the conversation starts (the campaign's ``inputs``)

        def successors(current: str) -> Iterator[str]:
            for arc in self.graph.out(current):
                if name not in self._sets(arc):
                    yield arc.target

        return path_to(start, node_id, successors)

    def sets_on_leaving(self, node_id: str, edge: Edge | None) -> frozenset[str]:
        """``sets_leaving`` for a node id; a node or edge that failed to parse is trusted to set
        what it says it sets, so its own errors are not repeated as unset variables."""
        node = self.graph.nodes.get(node_id)
        if node is None:
            raw = self.graph.raw.get(node_id)
            return frozenset(raw.assigned) if raw is not None else frozenset()
        return frozenset(node.assigned()) if edge is None else sets_leaving(node, edge)

    def _sets(self, arc: Arc) -> frozenset[str]:
        if arc.jump:
            return frozenset()
        guard = guarded(arc.edge) if arc.edge is not None else frozenset()
        return self.sets_on_leaving(arc.source, arc.edge) | guard
