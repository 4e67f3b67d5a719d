"""How the nodes of a campaign fit together: every graph problem, each with its node id.

The checks run on a ``Draft`` rather than a ``Campaign`` so they still run when some nodes or
edges failed schema validation; an author then sees every problem of the file in one go. Ids,
links and assigned variables are read from the raw document, so one broken node does not also
make its neighbours look unreachable or its variable look unassigned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from parley.campaign.conditions import WHEN_INVALID
from parley.campaign.model import Edge, EndNode, HttpNode, Node
from parley.campaign.templates import has_stray_braces, placeholders

Problem = tuple[str | None, str]


@dataclass(frozen=True)
class Link:
    """An edge as written: enough for the graph's shape even if its condition is broken."""

    index: int
    source: str
    target: str
    when_invalid: bool


@dataclass(frozen=True)
class Draft:
    start: str | None
    node_ids: list[str]
    links: list[Link]
    assigned: frozenset[str]
    nodes: list[Node]
    edges: dict[int, Edge]


def find_problems(draft: Draft) -> list[Problem]:
    return [problem for check in _CHECKS for problem in check(draft)]


def _duplicate_ids(draft: Draft) -> Iterator[Problem]:
    for node_id, count in Counter(draft.node_ids).items():
        if count > 1:
            yield node_id, f"node id {node_id!r} is used by {count} nodes"


def _unknown_start(draft: Draft) -> Iterator[Problem]:
    if draft.start is not None and draft.start not in draft.node_ids:
        yield None, f"start {draft.start!r} is not a node"


def _dangling_links(draft: Draft) -> Iterator[Problem]:
    known = set(draft.node_ids)
    for link in draft.links:
        for end, node_id in (("from", link.source), ("to", link.target)):
            if node_id not in known:
                yield link.source, f"edges[{link.index}]: '{end}' names unknown node {node_id!r}"


def _unreachable_nodes(draft: Draft) -> Iterator[Problem]:
    if draft.start not in draft.node_ids:
        return
    reached = _reachable(draft.start, draft.links)
    for node_id in dict.fromkeys(draft.node_ids):
        if node_id not in reached:
            yield node_id, f"node {node_id!r} cannot be reached from start {draft.start!r}"


def _reachable(start: str, links: Iterable[Link]) -> set[str]:
    targets: dict[str, list[str]] = {}
    for link in links:
        targets.setdefault(link.source, []).append(link.target)
    reached, pending = {start}, [start]
    while pending:
        for target in targets.get(pending.pop(), []):
            if target not in reached:
                reached.add(target)
                pending.append(target)
    return reached


def _dead_ends(draft: Draft) -> Iterator[Problem]:
    continuing = {link.source for link in draft.links if not link.when_invalid}
    for node in draft.nodes:
        if isinstance(node, EndNode) or node.id in continuing:
            continue
        exhausted_only = any(link.source == node.id for link in draft.links)
        besides = f" besides 'when: {WHEN_INVALID}'" if exhausted_only else ""
        yield (
            node.id,
            (
                f"{node.type} node {node.id!r} has no outgoing edge{besides};"
                " only end nodes may finish a conversation"
            ),
        )


def _end_nodes_with_edges(draft: Draft) -> Iterator[Problem]:
    for node in draft.nodes:
        if not isinstance(node, EndNode):
            continue
        indices = [f"edges[{link.index}]" for link in draft.links if link.source == node.id]
        if indices:
            yield node.id, f"end node {node.id!r} has outgoing edges: {', '.join(indices)}"


def _misplaced_invalid(draft: Draft) -> Iterator[Problem]:
    types = {node.id: node.type for node in draft.nodes}
    for link in draft.links:
        node_type = types.get(link.source)  # None: unknown or unparsed, reported elsewhere
        if link.when_invalid and node_type not in (None, "ask"):
            yield (
                link.source,
                (
                    f"edges[{link.index}]: 'when: {WHEN_INVALID}' only applies to edges leaving an"
                    f" ask node, and {link.source!r} is a {node_type} node"
                ),
            )


def _shadowed_edges(draft: Draft) -> Iterator[Problem]:
    catch_all: dict[str, int] = {}
    for index, edge in sorted(draft.edges.items()):
        if edge.source in catch_all and not edge.on_invalid:
            yield (
                edge.source,
                (
                    f"edges[{index}] is never taken: edges[{catch_all[edge.source]}] from"
                    f" {edge.source!r} has no condition and always matches first"
                ),
            )
        elif edge.when is None:
            catch_all.setdefault(edge.source, index)


def _template_syntax(draft: Draft) -> Iterator[Problem]:
    for node in draft.nodes:
        for field, template in node.templates().items():
            if has_stray_braces(template):
                yield (
                    node.id,
                    (
                        f"{field} {template!r} has a stray brace: placeholders look like"
                        " {name}, literal braces are written {{ and }}"
                    ),
                )


def _unassigned_variables(draft: Draft) -> Iterator[Problem]:
    for node in draft.nodes:
        for field, name in _variables_read(node):
            if name not in draft.assigned:
                yield node.id, f"{field} uses variable {name!r}, but no ask or http node sets it"
    for index, edge in sorted(draft.edges.items()):
        if edge.when is not None and not isinstance(edge.when, str):
            name = edge.when.var
            if name not in draft.assigned:
                yield (
                    edge.source,
                    (
                        f"edges[{index}]: condition uses variable {name!r},"
                        " but no ask or http node sets it"
                    ),
                )


def _variables_read(node: Node) -> Iterator[tuple[str, str]]:
    for field, template in node.templates().items():
        for name in dict.fromkeys(placeholders(template)):
            yield field, name
    if isinstance(node, HttpNode):
        for name in node.send:
            yield "send", name


_CHECKS: tuple[Callable[[Draft], Iterator[Problem]], ...] = (
    _duplicate_ids,
    _unknown_start,
    _dangling_links,
    _unreachable_nodes,
    _dead_ends,
    _end_nodes_with_edges,
    _misplaced_invalid,
    _shadowed_edges,
    _template_syntax,
    _unassigned_variables,
)
