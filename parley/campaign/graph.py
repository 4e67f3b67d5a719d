"""The campaign's graph as the analyses walk it: nodes, arcs, reachability, cycles.

Besides the edges as written, a reply that interrupts a timer wait jumps to the campaign's
``on_reply`` node; those jumps are arcs too (``Arc.jump``), so the ``on_reply`` sub-graph is
reachable and what it reads is checked along them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from parley.campaign.conditions import WHEN_REPLIED
from parley.campaign.draft import Draft
from parley.campaign.model import Edge, Node, sleeps_on_timer
from parley.campaign.nodes import NODE_TYPES, WAITING_TYPES


@dataclass(frozen=True)
class Arc:
    source: str
    target: str
    edge: Edge | None  # None: an on_reply jump, or an edge that failed to parse
    index: int | None  # edges[index]; None for an on_reply jump

    @property
    def jump(self) -> bool:
        return self.index is None


class FlowGraph:
    """Arcs between known nodes only: links to unknown nodes are reported on their own."""

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.nodes = draft.parsed()
        self.raw = draft.raw()
        known = set(draft.node_ids)
        self._out: dict[str, list[Arc]] = {node_id: [] for node_id in known}
        for link in draft.links:
            if link.source in known and link.target in known:
                arc = Arc(link.source, link.target, draft.edges.get(link.index), link.index)
                self._out[link.source].append(arc)
        if draft.on_reply in known:
            for node_id in dict.fromkeys(draft.node_ids):
                if self._jumps_on_reply(node_id):
                    self._out[node_id].append(Arc(node_id, draft.on_reply, None, None))

    def out(self, node_id: str) -> list[Arc]:
        return self._out.get(node_id, [])

    def edges_from(self, node_id: str) -> list[Edge] | None:
        """The node's parsed edges, or ``None`` if one of them failed to parse."""
        arcs = [arc for arc in self.out(node_id) if not arc.jump]
        edges = [arc.edge for arc in arcs if arc.edge is not None]
        return edges if len(edges) == len(arcs) else None

    def type_of(self, node_id: str) -> str | None:
        node = self.nodes.get(node_id)
        if node is not None:
            return node.type
        raw = self.raw.get(node_id)
        return raw.type if raw is not None else None

    def waits(self, node_id: str) -> bool:
        """Whether the node itself waits (answer, clock, reply, person or delay). A node that
        failed to parse counts as waiting, so its errors are not repeated as a spinning loop."""
        node = self.nodes.get(node_id)
        if node is None:
            return True
        return node.type in WAITING_TYPES or node.delay is not None

    def reachable(self) -> set[str]:
        start = self.draft.start
        if start is None or start not in self._out:
            return set()
        return reach([start], lambda node_id: (arc.target for arc in self.out(node_id)))

    def _jumps_on_reply(self, node_id: str) -> bool:
        arcs = self.out(node_id)
        if any(arc.edge is not None and arc.edge.when == WHEN_REPLIED for arc in arcs):
            return False
        node: Node | None = self.nodes.get(node_id)
        if node is not None:
            return sleeps_on_timer(node, [arc.edge for arc in arcs if arc.edge is not None])
        raw = self.raw.get(node_id)
        if raw is None or raw.type == "wait_for_reply":
            return False
        return raw.type == "wait" or raw.delayed or raw.type not in NODE_TYPES


def reach(starts: Iterable[str], successors: Callable[[str], Iterable[str]]) -> set[str]:
    """Every node reachable from ``starts`` (included), breadth first."""
    reached = set(starts)
    pending = deque(reached)
    while pending:
        for target in successors(pending.popleft()):
            if target not in reached:
                reached.add(target)
                pending.append(target)
    return reached


def path_to(start: str, goal: str, successors: Callable[[str], Iterable[str]]) -> list[str] | None:
    """A shortest path ``[start, ..., goal]``; ``[start]`` when they are equal."""
    parents: dict[str, str | None] = {start: None}
    pending = deque([start])
    while pending:
        current = pending.popleft()
        if current == goal:
            return _unwind(parents, goal)
        for target in successors(current):
            if target not in parents:
                parents[target] = current
                pending.append(target)
    return None


def cycle_through(node_id: str, successors: Callable[[str], Iterable[str]]) -> list[str] | None:
    """A shortest cycle ``[node_id, ..., node_id]`` through ``node_id``, if there is one."""
    best: list[str] | None = None
    for first in dict.fromkeys(successors(node_id)):
        path = path_to(first, node_id, successors)
        if path is not None and (best is None or len(path) < len(best) - 1):
            best = [node_id, *path]
    return best


def _unwind(parents: dict[str, str | None], goal: str) -> list[str]:
    path = [goal]
    while (parent := parents[path[-1]]) is not None:
        path.append(parent)
    return path[::-1]
