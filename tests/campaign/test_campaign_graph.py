from pathlib import Path

import pytest

from parley.campaign import (
    AskNode,
    Campaign,
    Edge,
    EndNode,
    EqualsCondition,
    ExistsCondition,
    HttpNode,
    InCondition,
    SendNode,
    campaign_digest,
    load_campaign,
    parse_campaign,
)
from parley.errors import CampaignInvalid, NotFound

ONBOARDING = Path(__file__).parents[2] / "examples" / "campaigns" / "onboarding.yaml"


def test_onboarding_example_loads_and_validates() -> None:
    campaign = load_campaign(ONBOARDING)

    assert (campaign.name, campaign.version, campaign.start) == ("onboarding", 1, "ask_name")
    assert campaign.description
    email = campaign.node("ask_email")
    assert isinstance(email, AskNode)
    assert (email.var, email.validation, email.max_attempts) == ("email", "email", 3)
    assert email.retry == "That doesn't look like an email address. Please try again."
    plan = campaign.node("ask_plan")
    assert isinstance(plan, AskNode)
    assert [(c.id, c.title) for c in plan.choices] == [("basic", "Basic"), ("pro", "Pro")]
    register = campaign.node("register")
    assert isinstance(register, HttpNode)
    assert register.url == "{env.CRM_URL}/crm/contacts"
    assert campaign.env == {"CRM_URL": "http://127.0.0.1:8090"}
    assert (register.send, register.result_var) == (["name", "email", "plan"], "crm")
    confirm = campaign.node("confirm")
    assert isinstance(confirm, SendNode)
    assert confirm.text == "Thanks {name}, you're on {plan}."


def test_onboarding_example_walks_from_start_to_end() -> None:
    campaign = load_campaign(ONBOARDING)
    answers = {"name": "Ada", "email": "ada@example.com", "plan": "Pro"}

    path = [campaign.start]
    while (following := campaign.next_node(path[-1], answers)) is not None:
        path.append(following)

    assert path == ["ask_name", "ask_email", "ask_plan", "register", "confirm", "done"]
    assert campaign.next_node("ask_email", {}, outcome="invalid") == "email_unreadable"
    unreadable = campaign.node("email_unreadable")
    assert isinstance(unreadable, EndNode)
    assert unreadable.text is not None


def _routing(*edges: Edge) -> Campaign:
    nodes = [
        AskNode(id="ask", prompt="Plan?", var="plan"),
        SendNode(id="send", text="hi"),
        *(EndNode(id=name) for name in ("a", "b", "c", "d")),
    ]
    return Campaign(name="routing", start="ask", nodes=nodes, edges=list(edges))


def test_first_matching_edge_in_file_order_wins() -> None:
    campaign = _routing(
        Edge(source="ask", target="a", when=EqualsCondition(var="plan", equals="pro")),
        Edge(source="ask", target="b", when=InCondition(var="plan", in_=["Pro", "Basic"])),
        Edge(source="ask", target="c"),
        Edge(source="ask", target="d"),
    )

    assert campaign.next_node("ask", {"plan": "Pro"}) == "a"
    assert campaign.next_node("ask", {"plan": "basic"}) == "b"
    assert campaign.next_node("ask", {"plan": "Free"}) == "c"
    assert campaign.next_node("ask", {}) == "c"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Pro", "a"), ("  PRO ", "a"), ("pro", "a"), ("Basic", None), (None, None), (3, None)],
)
def test_equals_ignores_case_and_surrounding_spaces(value: object, expected: str | None) -> None:
    campaign = _routing(
        Edge(source="ask", target="a", when=EqualsCondition(var="plan", equals="Pro"))
    )

    assert campaign.next_node("ask", {"plan": value}) == expected


def test_in_matches_any_listed_value_ignoring_case() -> None:
    campaign = _routing(
        Edge(source="ask", target="a", when=InCondition(var="plan", in_=["basic", "Pro"]))
    )

    assert campaign.next_node("ask", {"plan": "BASIC"}) == "a"
    assert campaign.next_node("ask", {"plan": "pro"}) == "a"
    assert campaign.next_node("ask", {"plan": "Enterprise"}) is None


def test_exists_tells_set_variables_from_unset_ones() -> None:
    campaign = _routing(
        Edge(source="ask", target="a", when=ExistsCondition(var="crm", exists=True)),
        Edge(source="ask", target="b", when=ExistsCondition(var="crm", exists=False)),
    )

    assert campaign.next_node("ask", {"crm": {"id": 7}}) == "a"
    assert campaign.next_node("ask", {"crm": None}) == "b"
    assert campaign.next_node("ask", {"crm": ""}) == "b"
    assert campaign.next_node("ask", {}) == "b"


def test_invalid_outcome_follows_only_when_invalid_edges() -> None:
    campaign = _routing(
        Edge(source="ask", target="a"),
        Edge(source="ask", target="b", when="invalid"),
    )

    assert campaign.next_node("ask", {}, outcome="invalid") == "b"
    assert campaign.next_node("ask", {}) == "a"


def test_invalid_outcome_without_when_invalid_edge_ends_the_conversation() -> None:
    campaign = _routing(Edge(source="ask", target="a"))

    assert campaign.next_node("ask", {}, outcome="invalid") is None


def test_no_matching_edge_ends_the_conversation() -> None:
    campaign = _routing(
        Edge(source="ask", target="a", when=EqualsCondition(var="plan", equals="Pro"))
    )

    assert campaign.next_node("ask", {"plan": "Basic"}) is None
    assert campaign.next_node("send", {}) is None


def test_conditions_parse_from_their_yaml_forms() -> None:
    campaign = parse_campaign(
        """
name: forms
start: ask
nodes:
  - {id: ask, type: ask, prompt: "Plan?", var: plan}
  - {id: a, type: end}
  - {id: b, type: end}
  - {id: c, type: end}
  - {id: d, type: end}
edges:
  - {from: ask, to: a, when: invalid}
  - {from: ask, to: b, when: {var: plan, equals: 3}}
  - {from: ask, to: c, when: {var: plan, in: [x, y]}}
  - {from: ask, to: d, when: {var: plan, exists: true}}
"""
    )

    assert campaign.next_node("ask", {"plan": "3"}) == "b"
    assert campaign.next_node("ask", {"plan": "Y"}) == "c"
    assert campaign.next_node("ask", {"plan": "z"}) == "d"
    assert campaign.next_node("ask", {"plan": "z"}, outcome="invalid") == "a"


def test_unknown_node_is_not_found_rather_than_a_silent_end() -> None:
    campaign = load_campaign(ONBOARDING)

    with pytest.raises(NotFound):
        campaign.node("nope")
    with pytest.raises(NotFound):
        campaign.next_node("nope", {})


def test_missing_campaign_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_campaign(tmp_path / "absent.yaml")


def test_digest_ignores_comments_formatting_and_key_order() -> None:
    text = ONBOARDING.read_text(encoding="utf-8")
    reformatted = "# a new comment\n" + text.replace(
        "name: onboarding\nversion: 1", "version: 1\nname:   onboarding"
    )

    assert reformatted != text
    assert campaign_digest(reformatted) == campaign_digest(text)
    assert len(campaign_digest(text)) == 64


def test_digest_changes_with_the_content() -> None:
    text = ONBOARDING.read_text(encoding="utf-8")

    assert campaign_digest(text.replace("you're on {plan}.", "enjoy {plan}!")) != campaign_digest(
        text
    )


def test_digest_refuses_an_invalid_campaign() -> None:
    with pytest.raises(CampaignInvalid):
        campaign_digest("name: x\n")
