"""A campaign as far as it parsed: what the graph checks run on.

The checks run on a ``Draft`` rather than a ``Campaign`` so they still run when some nodes or
edges failed schema validation; an author then sees every problem of the file in one go. Ids,
links, node types and assigned variables are read from the raw document, so one broken node does
not also make its neighbours look unreachable or its variable look unassigned.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.campaign.model import Edge, Node

Problem = tuple[str | None, str]


@dataclass(frozen=True)
class Link:
    """An edge as written: enough for the graph's shape even if its condition is broken."""

    index: int
    source: str
    target: str
    outcome: str | None  # "invalid" / "error" edges are only taken when the node ends so


@dataclass(frozen=True)
class RawChoices:
    """A node's reply buttons as written, so they are checked even if the node is broken."""

    index: int
    node_id: str | None
    buttons: tuple[tuple[str, str], ...]  # (id, title)

    @property
    def label(self) -> str:
        return f"nodes[{self.index}]" + (f" (id {self.node_id!r})" if self.node_id else "")


@dataclass(frozen=True)
class RawNode:
    """A node as written, for nodes that failed to parse: what it is and what it sets."""

    node_id: str
    type: str | None
    delayed: bool
    assigned: tuple[str, ...]


@dataclass(frozen=True)
class Draft:
    start: str | None
    node_ids: list[str]
    links: list[Link]
    assigned: frozenset[str]
    nodes: list[Node]
    edges: dict[int, Edge]
    channel: str = "whatsapp"
    env: dict[str, str] | None = None
    choices: tuple[RawChoices, ...] = ()
    raw_nodes: tuple[RawNode, ...] = ()
    on_reply: str | None = None
    inputs: frozenset[str] = frozenset()
    """Variables every conversation starts with (the campaign's ``inputs``: a lead's fields)."""
    texts: tuple[tuple[str, str], ...] = ()
    """Campaign-level templates (``error_text``, ``inactivity_timeout.text``) by field name."""

    def parsed(self) -> dict[str, Node]:
        """Parsed nodes by id; the first of two nodes sharing an id (reported elsewhere)."""
        nodes: dict[str, Node] = {}
        for node in self.nodes:
            nodes.setdefault(node.id, node)
        return nodes

    def raw(self) -> dict[str, RawNode]:
        nodes: dict[str, RawNode] = {}
        for node in self.raw_nodes:
            nodes.setdefault(node.node_id, node)
        return nodes
