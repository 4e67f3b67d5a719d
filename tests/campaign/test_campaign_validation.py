from pathlib import Path

import pytest

from parley.campaign import parse_campaign
from parley.errors import CampaignInvalid

BROKEN = Path(__file__).parent / "fixtures" / "broken.yaml"

VALID = """
name: tiny
start: ask
nodes:
  - {id: ask, type: ask, prompt: "Name?", var: name}
  - {id: bye, type: end, text: "Bye {name}"}
edges:
  - {from: ask, to: bye}
"""


def _problems(text: str) -> list[tuple[str | None, str]]:
    with pytest.raises(CampaignInvalid) as caught:
        parse_campaign(text, source="test.yaml")
    return caught.value.problems


def _has(problems: list[tuple[str | None, str]], node: str | None, *fragments: str) -> bool:
    return any(
        problem_node == node and all(fragment in message for fragment in fragments)
        for problem_node, message in problems
    )


def test_a_valid_campaign_parses() -> None:
    assert parse_campaign(VALID).name == "tiny"


@pytest.mark.parametrize(
    ("node", "fragments"),
    [
        (None, ("field 'name'", "'Broken Campaign'")),
        ("ask_email", ("nodes[2] (id 'ask_email'): field 'var' is required",)),
        ("ask_plan", ("nodes[3]", "'validate: choices' needs at least one choice")),
        ("ask_colour", ("nodes[4]", "at most 3 reply buttons", "got 4")),
        ("ask_colour", ("nodes[4]", "field 'max_attempts'", "greater than or equal to 1")),
        ("ask_size", ("nodes[5]", "choices[1].title", "at most 20")),
        ("ask_mood", ("nodes[6]", "only used with 'validate: choices'")),
        ("ask_size", ("edges[4]", "field 'when'")),
        ("greet", ("node id 'greet' is used by 2 nodes",)),
        ("ask_plan", ("edges[7]", "'to' names unknown node 'ghost'")),
        ("lonely", ("cannot be reached from start 'greet'",)),
        ("lonely", ("has no outgoing edge",)),
        ("finish", ("end node 'finish' has outgoing edges", "edges[9]")),
        ("greet", ("edges[1]", "'when: invalid' only applies to edges leaving an ask node")),
        ("ask_mood", ("edges[6] is never taken", "edges[5]")),
        ("lonely", ("stray brace",)),
        ("greet", ("variable 'nickname'", "no ask or http node sets it")),
        ("ask_mood", ("edges[6]", "variable 'weather'")),
    ],
)
def test_broken_fixture_reports_each_problem_with_its_node(
    node: str | None, fragments: tuple[str, ...]
) -> None:
    problems = _problems(BROKEN.read_text(encoding="utf-8"))

    assert _has(problems, node, *fragments), problems


def test_broken_fixture_reports_all_problems_together() -> None:
    problems = _problems(BROKEN.read_text(encoding="utf-8"))

    assert len(problems) == 18
    with pytest.raises(CampaignInvalid, match="ask_email: nodes\\[2\\]"):
        parse_campaign(BROKEN.read_text(encoding="utf-8"))


def test_a_broken_node_does_not_make_its_neighbours_look_unreachable() -> None:
    problems = _problems(VALID.replace('prompt: "Name?", ', ""))

    assert problems == [("ask", "nodes[0] (id 'ask'): field 'prompt' is required")]


def test_yaml_syntax_error_names_the_line() -> None:
    problems = _problems("name: tiny\nstart: ask\nnodes: [\n  {id: ask\n")

    assert len(problems) == 1
    node, message = problems[0]
    assert node is None
    assert "test.yaml: YAML syntax error at line 5" in message


def test_duplicate_yaml_keys_are_refused_with_their_line() -> None:
    problems = _problems(VALID + "nodes: []\n")

    assert problems[0][0] is None
    assert "duplicate key 'nodes'" in problems[0][1]
    assert "line 9" in problems[0][1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must be a mapping"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: tiny\nstart: ask\n", "field 'nodes' is required"),
        ("name: tiny\nstart: ask\nnodes: {}\nedges: []\n", "field 'nodes' must be a list"),
    ],
)
def test_document_shape_problems(text: str, message: str) -> None:
    problems = _problems(text)

    assert any(node is None and message in text_ for node, text_ in problems), problems


def test_start_that_is_not_a_node() -> None:
    problems = _problems(VALID.replace("start: ask", "start: nowhere"))

    assert (None, "start 'nowhere' is not a node") in problems


def test_edge_from_unknown_node_names_that_node() -> None:
    problems = _problems(VALID + "  - {from: ghost, to: bye}\n")

    assert ("ghost", "edges[1]: 'from' names unknown node 'ghost'") in problems


def test_unknown_node_type_and_missing_type() -> None:
    text = VALID.replace(
        "nodes:\n", "nodes:\n  - {id: odd, type: teleport}\n  - {id: untyped, text: hi}\n"
    )

    problems = _problems(text)

    assert _has(problems, "odd", "nodes[0] (id 'odd'): field 'type' must be one of", "'teleport'")
    assert _has(problems, "untyped", "nodes[1] (id 'untyped'): field 'type' is required")


def test_unknown_field_is_reported_not_ignored() -> None:
    problems = _problems(VALID.replace("var: name}", "var: name, max_attempt: 2}"))

    assert ("ask", "nodes[0] (id 'ask'): unknown field 'max_attempt'") in problems


def test_only_invalid_edges_leave_an_ask_node_without_a_normal_path() -> None:
    problems = _problems(
        VALID.replace("{from: ask, to: bye}", "{from: ask, to: bye, when: invalid}")
    )

    assert _has(problems, "ask", "has no outgoing edge besides 'when: invalid'")


HTTP = """
name: http
start: ask
nodes:
  - {id: ask, type: ask, prompt: "Name?", var: name}
  - {id: call, type: http, url: "URL", send: SEND, result_var: crm}
  - {id: bye, type: end, text: "Bye {name}, you are {crm}"}
edges:
  - {from: ask, to: call}
  - {from: call, to: bye}
"""


def _http(url: str, send: str) -> str:
    return HTTP.replace("URL", url).replace("SEND", send)


def test_http_node_reads_its_send_variables_and_sets_its_result_var() -> None:
    campaign = parse_campaign(_http("https://crm.example/{name}", "[name]"))

    assert campaign.next_node("call", {}) == "bye"


def test_http_node_needs_an_http_url() -> None:
    problems = _problems(_http("ftp://crm.example", "[name]"))

    assert _has(problems, "call", "field 'url'", "'ftp://crm.example' is not an http")


def test_http_node_variables_must_be_set_somewhere() -> None:
    problems = _problems(_http("https://crm.example/{who}", "[name, age]"))

    assert ("call", "url uses variable 'who', but no ask or http node sets it") in problems
    assert ("call", "send uses variable 'age', but no ask or http node sets it") in problems


def test_bad_choice_ids_and_titles() -> None:
    text = VALID.replace(
        "var: name}",
        "var: name, validate: choices, choices: [{id: a, title: A}, {id: a, title: a}]}",
    )

    problems = _problems(text)

    assert _has(problems, "ask", "choice ids must be unique", "'a'")
