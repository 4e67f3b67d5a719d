"""Schema validation of a parsed campaign document, one node and one edge at a time.

Validating pieces separately keeps going past the first broken node, so the graph checks still
run on everything that did parse. Pydantic's errors are reworded to name the node they concern,
e.g. ``nodes[2] (id 'ask_email'): field 'var' is required``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from parley.campaign.checks import find_problems
from parley.campaign.conditions import CONDITION_TAGS, OUTCOME_WHENS
from parley.campaign.draft import Draft, Link, Problem, RawChoices, RawNode
from parley.campaign.model import Campaign, Edge, Node
from parley.campaign.nodes import NODE_TYPES
from parley.errors import CampaignInvalid

_NODE: TypeAdapter[Node] = TypeAdapter(Node)
_ASSIGNING_FIELDS = ("var", "result_var")
_SET_VALUE_TAGS = ("expr", "literal")
_CAMPAIGN_TEXTS = (("error_text",), ("inactivity_timeout", "text"))
Location = tuple[int | str, ...]


def build_campaign(document: object) -> Campaign:
    """The validated campaign, or ``CampaignInvalid`` listing every problem found."""
    if not isinstance(document, dict):
        raise CampaignInvalid(
            [(None, "a campaign file must be a mapping with name, start, nodes and edges")]
        )
    problems: list[Problem] = []
    raw_nodes = _list_field(document, "nodes", problems)
    raw_edges = _list_field(document, "edges", problems)
    problems += _header_problems(document)
    nodes = _parse_nodes(raw_nodes, problems)
    edges = _parse_edges(raw_edges, problems)
    problems += find_problems(_draft(document, raw_nodes, raw_edges, nodes, edges))
    if problems:
        raise CampaignInvalid(problems)
    return Campaign.model_validate({**document, "nodes": nodes, "edges": list(edges.values())})


def _list_field(document: Mapping[str, Any], key: str, problems: list[Problem]) -> list[Any]:
    value = document.get(key)
    if isinstance(value, list):
        return value
    problems.append(
        (None, f"field '{key}' is required" if value is None else f"field '{key}' must be a list")
    )
    return []


def _header_problems(document: Mapping[str, Any]) -> list[Problem]:
    try:
        Campaign.model_validate({**document, "nodes": [], "edges": []})
    except ValidationError as error:
        return [(None, _describe(detail, detail["loc"])) for detail in error.errors()]
    return []


def _parse_nodes(raw_nodes: list[Any], problems: list[Problem]) -> list[Node]:
    nodes: list[Node] = []
    for index, raw in enumerate(raw_nodes):
        try:
            nodes.append(_NODE.validate_python(raw))
        except ValidationError as error:
            node_id = _string_at(raw, "id")
            label = f"nodes[{index}]" + (f" (id {node_id!r})" if node_id else "")
            for detail in error.errors():
                path = _without_node_tag(detail["loc"], raw)
                problems.append((node_id, f"{label}: {_describe(detail, path)}"))
    return nodes


def _parse_edges(raw_edges: list[Any], problems: list[Problem]) -> dict[int, Edge]:
    edges: dict[int, Edge] = {}
    for index, raw in enumerate(raw_edges):
        try:
            edges[index] = Edge.model_validate(raw)
        except ValidationError as error:
            source = _string_at(raw, "from")
            for detail in error.errors():
                path = _without_condition_tag(detail["loc"])
                problems.append((source, f"edges[{index}]: {_describe(detail, path)}"))
    return edges


def _draft(
    document: Mapping[str, Any],
    raw_nodes: list[Any],
    raw_edges: list[Any],
    nodes: list[Node],
    edges: dict[int, Edge],
) -> Draft:
    links = [
        Link(index, source, target, _outcome_of(raw))
        for index, raw in enumerate(raw_edges)
        if (source := _string_at(raw, "from")) and (target := _string_at(raw, "to"))
    ]
    node_ids = [node_id for raw in raw_nodes if (node_id := _string_at(raw, "id"))]
    raws = tuple(_raw_nodes(raw_nodes))
    start = _string_at(document, "start")
    env = document.get("env")
    inputs = frozenset(
        str(name) for name in (document.get("inputs") or []) if isinstance(name, str)
    )
    return Draft(
        start,
        node_ids,
        links,
        frozenset(name for raw in raw_nodes for name in _assigned_by(raw)) | inputs,
        nodes,
        edges,
        channel=_string_at(document, "channel") or "whatsapp",
        env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
        choices=tuple(_raw_choices(raw_nodes)),
        raw_nodes=raws,
        on_reply=_string_at(document, "on_reply"),
        inputs=inputs,
        texts=tuple(_campaign_texts(document)),
    )


def _raw_nodes(raw_nodes: list[Any]) -> Iterator[RawNode]:
    for raw in raw_nodes:
        node_id = _string_at(raw, "id")
        if node_id is not None:
            delayed = _at(raw, "delay") is not None
            yield RawNode(node_id, _string_at(raw, "type"), delayed, _assigned_by(raw))


def _assigned_by(raw: object) -> tuple[str, ...]:
    """The variables a node sets as written (``var``, ``result_var``, ``set`` keys)."""
    assigned = [name for key in _ASSIGNING_FIELDS if (name := _string_at(raw, key))]
    values = _at(raw, "set")
    if isinstance(values, dict):
        assigned += [key for key in values if isinstance(key, str) and key]
    return tuple(assigned)


def _campaign_texts(document: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for path in _CAMPAIGN_TEXTS:
        value: object = document
        for key in path:
            value = _at(value, key)
        if isinstance(value, str):
            yield ".".join(path), value


def _raw_choices(raw_nodes: list[Any]) -> Iterator[RawChoices]:
    for index, raw in enumerate(raw_nodes):
        choices = _at(raw, "choices")
        if not isinstance(choices, list) or not choices:
            continue
        buttons = tuple((str(_at(c, "id") or ""), str(_at(c, "title") or "")) for c in choices)
        yield RawChoices(index, _string_at(raw, "id"), buttons)


def _outcome_of(raw_edge: object) -> str | None:
    when = _at(raw_edge, "when")
    return when if isinstance(when, str) and when in OUTCOME_WHENS else None


def _describe(detail: ErrorDetails, path: Location) -> str:
    field = _format_path(path)
    kind = detail["type"]
    if kind == "missing":
        return f"field '{field}' is required"
    if kind == "extra_forbidden":
        return f"unknown field '{field}'"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _describe_node_type(detail)
    message = str(detail.get("ctx", {}).get("error", detail["msg"]))
    return f"field '{field}': {message}" if field else message


def _describe_node_type(detail: ErrorDetails) -> str:
    expected = ", ".join(map(repr, NODE_TYPES[:-1])) + f" or {NODE_TYPES[-1]!r}"
    tag = detail.get("ctx", {}).get("tag")
    if tag is None:
        return f"field 'type' is required: one of {expected}"
    return f"field 'type' must be one of {expected}, not {tag!r}"


def _without_node_tag(loc: Location, raw: object) -> Location:
    """Drop the union tags pydantic inserts, e.g. ('ask', 'var') -> ('var',) and
    ('set', 'set', 'total', 'expr', 'expr') -> ('set', 'total', 'expr')."""
    loc = loc[1:] if loc and loc[0] == _at(raw, "type") else loc
    if len(loc) > 2 and loc[0] == "set" and loc[2] in _SET_VALUE_TAGS:
        loc = (*loc[:2], *loc[3:])
    return _without_condition_tag(loc) if loc[:1] == ("when",) else loc


def _without_condition_tag(loc: Location) -> Location:
    """Drop the condition kind pydantic inserts, e.g. ('when', 'in', 'in') -> ('when', 'in')."""
    if len(loc) > 1 and loc[0] == "when" and loc[1] in CONDITION_TAGS:
        return (loc[0], *loc[2:])
    return loc


def _format_path(path: Location) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    return text.removeprefix(".")


def _at(raw: object, key: str) -> object:
    return raw.get(key) if isinstance(raw, dict) else None


def _string_at(raw: object, key: str) -> str | None:
    value = _at(raw, key)
    return value if isinstance(value, str) and value else None
