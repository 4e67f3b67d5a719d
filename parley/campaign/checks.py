"""How the nodes of a campaign fit together: every graph problem, each with its node id.

The checks run on a ``Draft`` (see ``draft``) so they still run when some nodes or edges failed
schema validation. Checks of how a conversation moves live in ``flow_checks``, the must-be-set
analysis of variables in ``assignments``; this module runs them all, in a fixed order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from parley.campaign.assignments import unassigned_variables
from parley.campaign.conditions import WHEN_INVALID
from parley.campaign.draft import Draft, Link, Problem, RawChoices, RawNode
from parley.campaign.flow_checks import (
    misplaced_conditions,
    missing_default_edges,
    on_reply_target,
    spinning_cycles,
    unreachable_connections,
)
from parley.campaign.graph import FlowGraph
from parley.campaign.model import EndNode, HttpNode
from parley.campaign.templates import (
    env_names,
    has_stray_braces,
    placeholders,
    render_url,
    secret_names,
)
from parley.channels.base import Capabilities
from parley.channels.catalog import CAPABILITIES
from parley.vocabulary import REPLY_ID_MAX_LENGTH

__all__ = ["Draft", "Link", "Problem", "RawChoices", "RawNode", "find_problems"]


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
    reached = FlowGraph(draft).reachable()
    for node_id in dict.fromkeys(draft.node_ids):
        if node_id not in reached:
            yield node_id, f"node {node_id!r} cannot be reached from start {draft.start!r}"


def _dead_ends(draft: Draft) -> Iterator[Problem]:
    continuing = {link.source for link in draft.links if link.outcome is None}
    for node in draft.nodes:
        if isinstance(node, EndNode) or node.id in continuing:
            continue
        special = sorted(
            {link.outcome for link in draft.links if link.source == node.id and link.outcome}
        )
        besides = f" besides 'when: {special[0]}'" if special else ""
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
        if link.outcome == WHEN_INVALID and node_type not in (None, "ask"):
            yield (
                link.source,
                (
                    f"edges[{link.index}]: 'when: {WHEN_INVALID}' only applies to edges leaving an"
                    f" ask node, and {link.source!r} is a {node_type} node"
                ),
            )


def _shadowed_edges(draft: Draft) -> Iterator[Problem]:
    """Edges after a catch-all are never taken, except outcome edges and, on a node that
    waits, edges that interrupt the wait (a catch-all only applies once the wait is over)."""
    graph = FlowGraph(draft)
    catch_all: dict[str, int] = {}
    for index, edge in sorted(draft.edges.items()):
        still_taken = edge.on_outcome or (edge.interrupts and graph.waits(edge.source))
        if edge.source in catch_all and not still_taken:
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


def _unknown_channel(draft: Draft) -> Iterator[Problem]:
    if draft.channel not in CAPABILITIES:
        known = ", ".join(sorted(CAPABILITIES))
        yield None, f"unknown channel {draft.channel!r}; Parley knows {known}"


def _choices_fit_the_channel(draft: Draft) -> Iterator[Problem]:
    capabilities = CAPABILITIES.get(draft.channel)
    if capabilities is None:
        return
    for raw in draft.choices:
        yield from _choice_problems(raw, draft.channel, capabilities)


def _choice_problems(raw: RawChoices, channel: str, caps: Capabilities) -> Iterator[Problem]:
    if len(raw.buttons) > caps.max_buttons:
        yield (
            raw.node_id,
            f"{raw.label}: {channel} allows at most {caps.max_buttons} reply buttons, "
            f"got {len(raw.buttons)} choices",
        )
    id_limit = min(caps.max_button_id, REPLY_ID_MAX_LENGTH)
    for index, (button_id, title) in enumerate(raw.buttons):
        if len(title) > caps.max_button_title:
            yield (
                raw.node_id,
                f"{raw.label}: choices[{index}].title {title!r} has {len(title)} "
                f"characters; {channel} buttons allow at most {caps.max_button_title}",
            )
        if len(button_id) > id_limit:
            yield (
                raw.node_id,
                f"{raw.label}: choices[{index}].id has {len(button_id)} characters; "
                f"at most {id_limit} can be sent and stored",
            )


def _texts_fit_the_channel(draft: Draft) -> Iterator[Problem]:
    capabilities = CAPABILITIES.get(draft.channel)
    if capabilities is None:
        return
    for node in draft.nodes:
        for field, template in node.contact_templates().items():
            if len(template) > capabilities.max_text_length:
                yield (
                    node.id,
                    f"{field} has {len(template)} characters; {draft.channel} messages allow "
                    f"at most {capabilities.max_text_length}",
                )


def _undeclared_env(draft: Draft) -> Iterator[Problem]:
    declared = draft.env or {}
    for node in draft.nodes:
        for field, template in node.templates().items():
            for name in dict.fromkeys(env_names(template)):
                if name not in declared:
                    yield (
                        node.id,
                        f"{field} uses {{env.{name}}}, but the campaign's 'env:' does not "
                        f"declare {name} (declare it with a default)",
                    )


def _secrets_outside_headers(draft: Draft) -> Iterator[Problem]:
    for node in draft.nodes:
        for field, template in node.templates().items():
            if secret_names(template) and not field.startswith("headers."):
                yield (
                    node.id,
                    f"{field} uses a {{secret.…}}: secrets may only appear in http headers, "
                    "never in anything a contact can see",
                )


def _http_urls(draft: Draft) -> Iterator[Problem]:
    for node in draft.nodes:
        if not isinstance(node, HttpNode) or not node.url.startswith("{env."):
            continue
        url = render_url(node.url, {}, draft.env or {})
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            yield node.id, f"url {node.url!r} is {url!r} with the declared env: not an http URL"


def _campaign_texts(draft: Draft) -> Iterator[Problem]:
    """``error_text`` and the inactivity message can be sent from any node: check them once."""
    declared = draft.env or {}
    capabilities = CAPABILITIES.get(draft.channel)
    for field, template in draft.texts:
        if capabilities is not None and len(template) > capabilities.max_text_length:
            yield (
                None,
                f"{field} has {len(template)} characters; {draft.channel} allows at most "
                f"{capabilities.max_text_length}",
            )
        if has_stray_braces(template):
            yield None, f"{field} {template!r} has a stray brace: write {{{{ and }}}} for braces"
        if secret_names(template):
            yield None, f"{field} uses a {{secret.…}}: secrets may only appear in http headers"
        for name in dict.fromkeys(env_names(template)):
            if name not in declared:
                yield None, f"{field} uses {{env.{name}}}, but 'env:' does not declare {name}"
        for name in dict.fromkeys(placeholders(template)):
            if name not in draft.assigned:
                yield None, f"{field} uses variable {name!r}, but no node sets it"


_CHECKS: tuple[Callable[[Draft], Iterator[Problem]], ...] = (
    _duplicate_ids,
    _unknown_start,
    _dangling_links,
    _unreachable_nodes,
    _dead_ends,
    _end_nodes_with_edges,
    _misplaced_invalid,
    misplaced_conditions,
    unreachable_connections,
    on_reply_target,
    _shadowed_edges,
    spinning_cycles,
    missing_default_edges,
    _template_syntax,
    unassigned_variables,
    _unknown_channel,
    _choices_fit_the_channel,
    _texts_fit_the_channel,
    _campaign_texts,
    _undeclared_env,
    _secrets_outside_headers,
    _http_urls,
)
