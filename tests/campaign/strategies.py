"""Hypothesis strategies for campaigns: random valid graphs, and random junk shaped like YAML.

``campaigns()`` draws the YAML text of a campaign that always validates, using every node type
and condition; reuse it to check that "a graph that validates never crashes the runner".
``campaign_documents()`` draws the same as a parsed document (a dict). How validity is kept:

- the start node is a ``set`` node giving the base variables ``v0`` (text), ``v1`` and ``v2``
  (numbers); everything else reads only those, so every read is set on every path, and other
  variables appear only in ``exists`` tests or in the edges of the node that sets them;
- every node after the start has a parent before it (so all are reachable), and edges only go
  forward except "back" edges that leave a node that waits, so every loop waits;
- every non-end node ends its edge list with edges that cover every case (a default edge, or
  ``replied`` + ``no_reply``, or one ``task_result`` per outcome), conditional edges go before;
- outreach: a ``send`` may carry an ``action`` (every action type, with the fields it needs)
  and a ``bundle`` queues two or three; conditions include the lead's (``has_email``,
  ``has_phone``, ``has_whatsapp``, ``not_already_contacted``, and ``connection_accepted`` once
  some node sends a LinkedIn invitation).

``yaml_documents()`` and ``mutated_documents()`` draw anything YAML can hold, the latter by
breaking one spot of a valid campaign so the checks run deep on odd shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from hypothesis import strategies as st

BASE_VARIABLES = ("v0", "v1", "v2")
NODE_TYPES = (
    "send",
    "ask",
    "http",
    "wait",
    "wait_for_reply",
    "branch",
    "set",
    "task",
    "bundle",
    "add_to_campaign",
)
PLACEMENT_OUTCOMES = ("started", "skipped", "invalid")
ACTIONS = (
    "email",
    "linkedin_message",
    "linkedin_connection",
    "linkedin_inmail",
    "linkedin_profile_visit",
    "linkedin_attachment",
    "linkedin_voice",
    "linkedin_like_post",
    "whatsapp_template",
)
OUTCOMES = ("reached", "voicemail", "no_answer")
WAITING = frozenset({"ask", "wait", "wait_for_reply", "task"})
DURATIONS = st.sampled_from(["30s", "15m", "2h", "1d", "1d12h", "1w"])
WORDS = st.sampled_from(["Hi", "Thanks", "pro", "Basic", "stop", "ok", "42", "ES", "{{x}}"])
TIMEZONES = st.sampled_from(["UTC", "Europe/Madrid", "America/New_York", "Asia/Kolkata"])


@dataclass
class _Draft:
    """The nodes drawn so far and each one's edges, by position in the file."""

    nodes: list[dict[str, Any]]
    edges: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def id(self, index: int) -> str:
        return str(self.nodes[index]["id"])

    def waits(self, index: int) -> bool:
        node = self.nodes[index]
        return node["type"] in WAITING or "delay" in node

    def queues_actions(self, index: int) -> bool:
        node = self.nodes[index]
        return node["type"] == "bundle" or "action" in node

    def invites(self) -> bool:
        """Whether some node sends a LinkedIn invitation (so ``connection_accepted`` may hold)."""
        for node in self.nodes:
            actions = [node, *node.get("actions", [])]
            if any(action.get("action") == "linkedin_connection" for action in actions):
                return True
        return False

    def hears_replies(self, index: int) -> bool:
        node = self.nodes[index]
        return node["type"] in ("wait", "wait_for_reply") or (
            "delay" in node and node["type"] != "ask"
        )


@st.composite
def _template(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(WORDS | st.sampled_from([f"{{{v}}}" for v in BASE_VARIABLES]), max_size=4)
    )
    return " ".join(["Hello", *parts])


@st.composite
def _expression(draw: st.DrawFn) -> str:
    return draw(
        st.sampled_from(
            [
                "v1 + 1",
                "v1 * 2 - v2",
                "len(v0)",
                "upper(v0) + '!'",
                "v1 // 2 + v2 % 3",
                "round(v1 / 3, 1)",
                "not v1 > v2 or v0 == 'x'",
                "str(v1) + lower(v0)",
            ]
        )
    )


def _start_node() -> dict[str, Any]:
    return {"id": "start", "type": "set", "set": {"v0": "Ada", "v1": 3, "v2": {"expr": "v1 + 1"}}}


@st.composite
def _node(draw: st.DrawFn, index: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(NODE_TYPES))
    node: dict[str, Any] = {"id": f"n{index}", "type": kind, **draw(_fields(kind, index))}
    if draw(st.booleans()) and draw(st.booleans()):
        node["delay"] = draw(DURATIONS)
    return node


@st.composite
def _fields(draw: st.DrawFn, kind: str, index: int) -> dict[str, Any]:
    if kind in ("send", "bundle"):
        return draw(_outreach_fields(kind))
    if kind == "ask":
        return draw(_ask_fields(index))
    if kind == "http":
        fields: dict[str, Any] = {
            "url": draw(st.sampled_from(["https://crm.example/c", "{env.CRM_URL}/c/{v0}"]))
        }
        fields["send"] = draw(st.lists(st.sampled_from(BASE_VARIABLES), unique=True, max_size=3))
        if draw(st.booleans()):
            fields["result_var"] = f"r{index}"
        return fields
    if kind == "wait":
        return draw(_wait_fields())
    if kind == "wait_for_reply":
        fields = {"var": f"w{index}"} if draw(st.booleans()) else {}
        return {**fields, **({"timeout": draw(DURATIONS)} if draw(st.booleans()) else {})}
    if kind == "set":
        value = st.one_of(
            _template(), st.integers(-5, 5), st.booleans(), _expression().map(lambda e: {"expr": e})
        )
        return {"set": {f"s{index}": draw(value)}}
    if kind == "task":
        return draw(_task_fields(index))
    if kind == "add_to_campaign":
        fields = {"campaign": draw(st.sampled_from(["nurture", "upsell"]))}
        return {**fields, **({"identity": draw(st.integers(1, 3))} if draw(st.booleans()) else {})}
    return {}


@st.composite
def _outreach_fields(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A send (a message, or an action queued for the identity) or a bundle of actions."""
    if kind == "bundle":
        return {"actions": draw(st.lists(_action_fields(), min_size=2, max_size=3))}
    if draw(st.booleans()):
        return draw(_action_fields())
    return {"text": draw(_template())}


@st.composite
def _action_fields(draw: st.DrawFn) -> dict[str, Any]:
    """An outreach action with what its type needs (text, subject, template, file, post)."""
    action = draw(st.sampled_from(ACTIONS))
    fields: dict[str, Any] = {"action": action}
    textless = action in ("linkedin_profile_visit", "linkedin_voice", "linkedin_like_post")
    if not textless and (action != "linkedin_attachment" or draw(st.booleans())):
        fields["text"] = draw(_template())
    if action in ("email", "linkedin_inmail"):
        fields["subject"] = draw(_template())
    if action == "whatsapp_template":
        fields["template"] = "winback_1"
    if action in ("linkedin_attachment", "linkedin_voice"):
        fields["file"] = draw(
            st.sampled_from(["https://files.example/a.pdf", "{env.CRM_URL}/{v0}"])
        )
    if action == "linkedin_like_post":
        fields["post"] = draw(st.sampled_from(["{v0}", "https://www.linkedin.com/posts/x_1"]))
    return fields


@st.composite
def _ask_fields(draw: st.DrawFn, index: int) -> dict[str, Any]:
    fields: dict[str, Any] = {"prompt": draw(_template()), "var": f"a{index}"}
    validation = draw(st.sampled_from(["text", "email", "choices"]))
    if validation == "choices":
        titles = draw(
            st.lists(
                st.sampled_from(["Yes", "No", "Later", "Pro"]), min_size=1, max_size=3, unique=True
            )
        )
        fields["choices"] = [{"id": title.lower(), "title": title} for title in titles]
    if validation != "text" or draw(st.booleans()):
        fields["validate"] = validation
    if draw(st.booleans()):
        fields["max_attempts"] = draw(st.integers(1, 4))
    return fields


@st.composite
def _wait_fields(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"duration": draw(DURATIONS)}
    until: dict[str, Any] = {"time": draw(st.sampled_from(["00:00", "02:30", "09:05", "23:59"]))}
    if draw(st.booleans()):
        until["weekday"] = draw(st.sampled_from(["mon", "tue", "Sunday"]))
    return {"until": until}


@st.composite
def _task_fields(draw: st.DrawFn, index: int) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "title": draw(_template()),
        "var": f"t{index}",
        "outcomes": draw(st.lists(st.sampled_from(OUTCOMES), min_size=1, unique=True)),
    }
    if draw(st.booleans()):
        fields["description"] = draw(_template())
    kinds = st.sampled_from(["text", "number", "datetime", "bool"])
    extra = draw(
        st.dictionaries(st.sampled_from(["notes", "callback_at", "score"]), kinds, max_size=2)
    )
    return {**fields, "fields": extra} if extra else fields


@st.composite
def _condition(draw: st.DrawFn, graph: _Draft, index: int) -> object:
    """A condition that is valid on an edge leaving node ``index`` and never shadows others."""
    node = graph.nodes[index]
    subject = draw(st.sampled_from([{"var": v} for v in BASE_VARIABLES] + [{"field": "country"}]))
    options: list[Any] = [
        {**subject, "equals": draw(WORDS)},
        {**subject, "not_equals": draw(WORDS)},
        {**subject, "in": draw(st.lists(WORDS, min_size=1, max_size=3))},
        {**subject, "contains": draw(WORDS)},
        {**subject, "lt": draw(st.integers(-10, 10))},
        {**subject, "gt": draw(st.floats(-10, 10, allow_nan=False))},
        {**subject, "exists": draw(st.booleans())},
        {"var": draw(st.sampled_from(_assigned_anywhere(graph))), "exists": draw(st.booleans())},
    ]
    options += [
        draw(st.sampled_from(["has_email", "has_phone", "has_whatsapp"])),
        {draw(st.sampled_from(["has_email", "has_phone", "has_whatsapp"])): draw(st.booleans())},
        {"not_already_contacted": {"within": draw(DURATIONS)}},
    ]
    if graph.invites() and node["type"] != "wait_for_reply":  # there: judged after a reply
        options.append("connection_accepted")
    if index > 0:  # the start node sleeps on no timer, so a reply there never jumps to on_reply
        options.append({"time_passed": draw(DURATIONS)})
    if node["type"] == "ask":
        options.append({"var": node["var"], "equals": draw(WORDS)})
    if graph.hears_replies(index):
        options.append("replied")
    return draw(st.sampled_from(options))


def _assigned_anywhere(graph: _Draft) -> list[str]:
    names = list(BASE_VARIABLES)
    for node in graph.nodes:
        names += [node[key] for key in ("var", "result_var") if key in node]
        names += list(node.get("set", {}))
    return names


def _cover(graph: _Draft, index: int, targets: list[str]) -> list[dict[str, Any]]:
    """Edges that together always match, so the node never stops silently."""
    node = graph.nodes[index]
    source = graph.id(index)
    if node["type"] == "wait_for_reply":
        whens: list[object] = ["replied", "no_reply"]
    elif node["type"] == "task":
        whens = [{"task_result": outcome} for outcome in node["outcomes"]]
    elif node["type"] == "add_to_campaign":
        whens = [{"task_result": outcome} for outcome in PLACEMENT_OUTCOMES]
    else:
        whens = [None]
    edges = []
    for position, when in enumerate(whens):
        edge: dict[str, Any] = {"from": source, "to": targets[position % len(targets)]}
        if when is not None:
            edge["when"] = when
        edges.append(edge)
    return edges


@st.composite
def _edges_of(
    draw: st.DrawFn, graph: _Draft, index: int, children: list[int]
) -> list[dict[str, Any]]:
    source = graph.id(index)
    cover = _cover(graph, index, [graph.id(child) for child in children])
    covered = {edge["to"] for edge in cover}
    uncovered = [graph.id(child) for child in children if graph.id(child) not in covered]
    extra = [graph.id(draw(st.sampled_from(children))) for _ in range(draw(st.integers(0, 2)))]
    if graph.waits(index) and index > 0 and draw(st.booleans()):
        extra.append(graph.id(draw(st.integers(1, index))))  # a loop that waits at this node
    conditional = [
        {"from": source, "to": target, "when": draw(_condition(graph, index))}
        for target in uncovered + extra
    ]
    return [*conditional, *cover, *draw(_outcome_edges(graph, index))]


@st.composite
def _outcome_edges(draw: st.DrawFn, graph: _Draft, index: int) -> list[dict[str, Any]]:
    source = graph.id(index)
    later = st.sampled_from(range(index + 1, len(graph.nodes))).map(graph.id)
    edges: list[dict[str, Any]] = []
    if graph.nodes[index]["type"] == "ask" and draw(st.booleans()):
        edges.append({"from": source, "to": draw(later), "when": "invalid"})
    if index > 0 and draw(st.booleans()) and draw(st.booleans()):  # the start sets v0..v2
        edges.append({"from": source, "to": draw(later), "when": "error"})
    if graph.queues_actions(index) and draw(st.booleans()):
        edges.append({"from": source, "to": draw(later), "when": "taken_over"})
    return edges


@st.composite
def _children(draw: st.DrawFn, count: int, ends: int) -> dict[int, list[int]]:
    """Which later nodes each node leads to: every node has a parent before it."""
    children: dict[int, list[int]] = {index: [] for index in range(count - ends)}
    for child in range(1, count):
        parent = draw(st.integers(0, min(child, count - ends) - 1))
        children[parent].append(child)
    for parent, kids in children.items():
        if not kids:
            kids.append(draw(st.integers(parent + 1, count - 1)))
    return children


def _jump_sources(graph: _Draft) -> bool:
    """Whether a reply can jump to ``on_reply`` from some node (else on_reply is refused)."""
    for index, node in enumerate(graph.nodes):
        edges = graph.edges.get(index, [])
        if any(edge.get("when") == "replied" for edge in edges):
            continue
        if node["type"] == "wait" or "delay" in node:
            return True
        timed = any(
            isinstance(edge.get("when"), dict) and "time_passed" in edge["when"] for edge in edges
        )
        if timed and node["type"] not in WAITING:
            return True
    return False


@st.composite
def campaign_documents(draw: st.DrawFn) -> dict[str, Any]:
    middle = draw(st.integers(1, 7))
    ends = draw(st.integers(1, 2))
    nodes = [_start_node()] + [draw(_node(i)) for i in range(1, middle + 1)]
    nodes += [
        {
            "id": f"end{i}",
            "type": "end",
            **({"text": draw(_template())} if draw(st.booleans()) else {}),
        }
        for i in range(ends)
    ]
    graph = _Draft(nodes)
    for index, kids in draw(_children(len(nodes), ends)).items():
        graph.edges[index] = draw(_edges_of(graph, index, sorted(set(kids))))
    document: dict[str, Any] = {
        "name": "generated",
        "start": "start",
        "timezone": draw(TIMEZONES),
        "env": {"CRM_URL": "https://crm.example"},
        "nodes": nodes,
        "edges": [edge for index in sorted(graph.edges) for edge in graph.edges[index]],
    }
    if _jump_sources(graph) and draw(st.booleans()):
        document["on_reply"] = graph.id(draw(st.integers(1, len(nodes) - 1)))
    if draw(st.booleans()):
        document["inactivity_timeout"] = {"after": draw(DURATIONS), "text": draw(_template())}
    if draw(st.booleans()):
        document["error_text"] = draw(_template())
    return document


def campaigns() -> st.SearchStrategy[str]:
    """YAML texts of campaigns that always validate."""
    return campaign_documents().map(
        lambda doc: yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    )


# --- junk -------------------------------------------------------------------------------------

KEYS = st.sampled_from(
    [
        "name",
        "start",
        "nodes",
        "edges",
        "id",
        "type",
        "from",
        "to",
        "when",
        "var",
        "text",
        "delay",
        "duration",
        "until",
        "timeout",
        "set",
        "expr",
        "outcomes",
        "fields",
        "on_reply",
        "timezone",
        "inactivity_timeout",
        "time_passed",
        "task_result",
        "field",
        "equals",
        "lt",
        "in",
        "exists",
        "choices",
        "validate",
        "title",
        "time",
        "weekday",
        "after",
        "env",
    ]
) | st.text(max_size=6)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(NODE_TYPES),
    st.sampled_from(["end", "2d", "0s", "replied", "no_reply", "invalid", "error", "start"]),
    st.sampled_from(["n1", "UTC", "10:00", "{v0}", "{", "x.y", "1 +"]),
)
JUNK = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=16,
)


def yaml_documents() -> st.SearchStrategy[object]:
    """Anything YAML can hold, often shaped like a campaign so parsing gets past the top."""
    campaignish = st.fixed_dictionaries(
        {},
        optional={
            "name": JUNK,
            "start": SCALARS,
            "nodes": st.lists(st.dictionaries(KEYS, JUNK, max_size=5), max_size=4) | JUNK,
            "edges": st.lists(st.dictionaries(KEYS, JUNK, max_size=4), max_size=4) | JUNK,
            "on_reply": SCALARS,
            "timezone": SCALARS,
            "inactivity_timeout": JUNK,
        },
    )
    return campaignish | JUNK


@st.composite
def mutated_documents(draw: st.DrawFn) -> object:
    """A valid campaign with one value somewhere replaced by junk (or deleted)."""
    document: Any = draw(campaign_documents())
    spot = document
    for _ in range(draw(st.integers(1, 5))):
        if isinstance(spot, dict) and spot:
            key = draw(st.sampled_from(sorted(spot, key=str)))
            child = spot[key]
            if not isinstance(child, dict | list) or draw(st.booleans()):
                if draw(st.booleans()):
                    spot[key] = draw(JUNK)
                else:
                    del spot[key]
                return document
            spot = child
        elif isinstance(spot, list) and spot:
            position = draw(st.integers(0, len(spot) - 1))
            if not isinstance(spot[position], dict | list) or draw(st.booleans()):
                spot[position] = draw(JUNK)
                return document
            spot = spot[position]
        else:
            break
    return document
