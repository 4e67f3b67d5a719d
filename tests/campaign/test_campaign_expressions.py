"""The expression language of ``set`` nodes: small, checked when loaded, never ``eval``."""

from __future__ import annotations

import pytest

from parley.campaign.expressions import ExpressionError, parse_expression
from parley.errors import ParleyError


@pytest.mark.parametrize(
    ("source", "variables", "expected"),
    [
        ("score + 1", {"score": 2}, 3),
        ("score * 2 - 1", {"score": 2}, 3),
        ("7 // 2 + 7 % 2", {}, 4),
        ("7 / 2", {}, 3.5),
        ("-x", {"x": 4}, -4),
        ("(a + b) * 2", {"a": 1, "b": 2}, 6),
        ("1 < x <= 3", {"x": 3}, True),
        ("x == 'pro' or x == 'basic'", {"x": "basic"}, True),
        ("not done and tries < 3", {"done": False, "tries": 1}, True),
        ("upper(name) + '!'", {"name": "ada"}, "ADA!"),
        ("lower(name)", {"name": "ADA"}, "ada"),
        ("len(name)", {"name": "Ada"}, 3),
        ("int(answer) + 1", {"answer": "41"}, 42),
        ("float('2.5') * 2", {}, 5.0),
        ("str(n) + ' items'", {"n": 3}, "3 items"),
        ("round(x)", {"x": 2.6}, 3),
        ("round(x, 1)", {"x": 2.66}, 2.7),
        ("x == None", {"x": None}, True),
        ("True", {}, True),
    ],
)
def test_expressions_evaluate(source: str, variables: dict[str, object], expected: object) -> None:
    assert parse_expression(source).evaluate(variables) == expected


def test_an_expression_names_the_variables_it_reads() -> None:
    assert parse_expression("upper(name) + str(score + bonus)").names == {
        "name",
        "score",
        "bonus",
    }


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "empty"),
        ("1 +", "not a valid expression"),
        ("name.lower()", "attribute access"),
        ("__import__('os')", "unknown function '__import__'"),
        ("open('x')", "unknown function 'open'"),
        ("items[0]", "subscripts"),
        ("[x for x in y]", "comprehensions"),
        ("lambda: 1", "lambdas"),
        ("2 ** 8", "'**'"),
        ("a if b else c", "'... if ... else ...'"),
        ("(x := 1)", "':='"),
        ("f'{x}'", "f-strings"),
        ("[1, 2]", "lists"),
        ("'a' in name", "'in'"),
        ("x is None", "'is'"),
        ("len(x=1)", "no keywords"),
        ("len(*x)", "no keywords or '*'"),
        ("len", "len is a function"),
        ("b'x'", "not an allowed literal"),
        ("1j", "not an allowed literal"),
        ("x" * 501, "longer than 500"),
        ("(" * 300 + "1" + ")" * 300, "longer than 500"),
        ("(" * 210 + "1" + ")" * 210, "not a valid expression"),
    ],
)
def test_forbidden_constructs_are_refused_when_parsed(source: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_expression(source)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("source", "variables", "fragment"),
    [
        ("x + 1", {}, "variable 'x' is not set"),
        ("x / 0", {"x": 1}, "division by zero"),
        ("x % 0", {"x": 1}, "division by zero"),
        ("name - 1", {"name": "Ada"}, "unsupported operand"),
        ("int(answer)", {"answer": "many"}, "invalid literal"),
        ("lower(n)", {"n": 3}, "lower() needs text"),
        ("x < 'a'", {"x": 1}, "not supported"),
        ("'x' * 1000000", {}, "longer than"),
        ("s + s", {"s": "y" * 60_000}, "longer than"),
        ("'%999999999d' % 1", {}, "'%' needs numbers"),
        ("int(float('inf'))", {}, "infinity"),
    ],
)
def test_runtime_failures_are_expression_errors(
    source: str, variables: dict[str, object], fragment: str
) -> None:
    expression = parse_expression(source)
    with pytest.raises(ExpressionError) as caught:
        expression.evaluate(variables)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ParleyError)
