from parley.campaign import render


def test_placeholders_are_replaced() -> None:
    assert render("Thanks {name}, you're on {plan}.", {"name": "Ada", "plan": "Pro"}) == (
        "Thanks Ada, you're on Pro."
    )


def test_missing_and_none_variables_render_empty() -> None:
    assert render("Hi {name}!{missing}", {"name": None}) == "Hi !"


def test_double_braces_escape() -> None:
    assert render("{{name}} is {name}; {{{name}}}", {"name": "Ada"}) == "{name} is Ada; {Ada}"


def test_values_with_braces_are_not_reinterpreted() -> None:
    variables = {"name": "{plan} {{x}} {", "plan": "Pro"}

    assert render("Hi {name} on {plan}", variables) == "Hi {plan} {{x}} { on Pro"


def test_stray_braces_render_as_written() -> None:
    assert render("a { b } {not a var} {0}", {"b": "x"}) == "a { b } {not a var} {0}"


def test_non_string_values_render_as_text() -> None:
    assert render("{n} items", {"n": 3}) == "3 items"
