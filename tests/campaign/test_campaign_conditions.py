"""Edge conditions on variables and contact fields, judged from an ``EdgeContext``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from parley.campaign import EdgeContext, parse_campaign
from parley.campaign.conditions import (
    ContainsCondition,
    EqualsCondition,
    ExistsCondition,
    GreaterThanCondition,
    InCondition,
    LessThanCondition,
    NotEqualsCondition,
)
from parley.errors import CampaignInvalid

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)


def _ctx(variables: dict[str, object] | None = None, **contact: object) -> EdgeContext:
    return EdgeContext(entered_at=NOW, now=NOW, variables=variables or {}, contact=contact)


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        (EqualsCondition(var="x", equals="Pro"), " pRO ", True),
        (EqualsCondition(var="x", equals="3"), 3.0, True),
        (EqualsCondition(var="x", equals="3"), "3.0", False),  # text stays text
        (EqualsCondition(var="x", equals="true"), True, True),
        (NotEqualsCondition(var="x", not_equals="Pro"), "basic", True),
        (NotEqualsCondition(var="x", not_equals="Pro"), "PRO", False),
        (NotEqualsCondition(var="x", not_equals="Pro"), None, True),
        (InCondition(var="x", in_=["a", "B"]), "b", True),
        (ContainsCondition(var="x", contains="STOP"), "please stop now", True),
        (ContainsCondition(var="x", contains="vip"), ["new", "VIP"], True),
        (ContainsCondition(var="x", contains="vip"), ["vipers"], False),
        (ContainsCondition(var="x", contains="x"), None, False),
        (ExistsCondition(var="x", exists=True), "", False),
        (LessThanCondition(var="x", lt=5), 4, True),
        (LessThanCondition(var="x", lt=5), " 4.5 ", True),  # a typed answer is a number too
        (LessThanCondition(var="x", lt=5), "five", False),
        (LessThanCondition(var="x", lt=5), True, False),
        (LessThanCondition(var="x", lt=5), None, False),
        (GreaterThanCondition(var="x", gt=5), 50, True),
        (GreaterThanCondition(var="x", gt=5), float("nan"), False),
        (GreaterThanCondition(var="x", gt=5), "1e999", False),
    ],
)
def test_comparisons(condition: EqualsCondition, value: object, expected: bool) -> None:
    assert condition.matches(_ctx({"x": value})) is expected


def test_field_conditions_read_the_contact_not_the_variables() -> None:
    spain = EqualsCondition.model_validate({"field": "country", "equals": "es"})
    assert spain.subject == ("field", "country")
    assert spain.matches(_ctx({"country": "FR"}, country="ES"))
    assert not spain.matches(_ctx({"country": "ES"}, country="FR"))
    assert not spain.matches(_ctx({"country": "ES"}))


ROUTES = """
name: routes
start: ask
nodes:
  - {id: ask, type: ask, prompt: "Score?", var: score}
  - {id: low, type: end}
  - {id: high, type: end}
  - {id: spain, type: end}
  - {id: stop, type: end}
  - {id: other, type: end}
edges:
  - {from: ask, to: stop, when: {var: score, contains: stop}}
  - {from: ask, to: low, when: {var: score, lt: 5}}
  - {from: ask, to: high, when: {var: score, gt: "10"}}
  - {from: ask, to: spain, when: {field: country, in: [ES, es-ct]}}
  - {from: ask, to: other, when: {field: country, not_equals: ES}}
  - {from: ask, to: other}
"""


@pytest.mark.parametrize(
    ("score", "country", "expected"),
    [
        ("3", None, "low"),
        ("11", None, "high"),
        ("7", "es", "spain"),
        ("7", "FR", "other"),
        ("Stop it", "ES", "stop"),
    ],
)
def test_yaml_conditions_route_by_variable_and_contact_field(
    score: str, country: str | None, expected: str
) -> None:
    campaign = parse_campaign(ROUTES)
    contact = {} if country is None else {"country": country}
    ctx = EdgeContext(
        entered_at=NOW, now=NOW, variables={"score": score}, contact=contact, replied=True
    )
    edge = campaign.next_edge("ask", ctx)
    assert edge is not None and edge.target == expected


def _problems(text: str) -> list[tuple[str | None, str]]:
    with pytest.raises(CampaignInvalid) as caught:
        parse_campaign(text)
    return caught.value.problems


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        ("{var: score, lt: abc}", "'abc' is not a number: lt and gt compare numbers"),
        ("{var: score, gt: true}", "True is not a number"),
        ("{var: score, lt: 1, gt: 2}", "exactly one of"),
        ("{var: score, field: country, equals: 1}", "name exactly one"),
        ("{equals: 1}", "name exactly one"),
        ("{field: 'bad name', equals: 1}", "not a valid variable name"),
        ("{time_passed: 2}", "write a number with a unit"),
        ("repliedd", "expected 'invalid', 'error', 'replied', 'no_reply'"),
    ],
)
def test_malformed_conditions_are_refused_with_their_edge(when: str, fragment: str) -> None:
    problems = _problems(ROUTES.replace("{var: score, lt: 5}", when))
    assert any(node == "ask" and "edges[1]" in m and fragment in m for node, m in problems), (
        problems
    )
