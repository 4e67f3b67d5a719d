"""Conditions on campaign edges.

Comparisons ignore case and surrounding whitespace: the values come from people typing on
phones, and "pro", "Pro " and "PRO" are the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from parley.campaign.names import VariableName

WHEN_INVALID: Final = "invalid"
"""``when: invalid``: the edge taken once an ask node has used up its attempts."""

WHEN_ERROR: Final = "error"
"""``when: error``: the edge taken when a node fails for good (a provider refused the send, the
http endpoint kept failing); without one, the conversation sends the campaign's ``error_text``
and ends ``failed``."""

OUTCOME_WHENS: Final = frozenset({WHEN_INVALID, WHEN_ERROR})


class _VariableTest(BaseModel):
    # Numbers are accepted as strings so `equals: 3` in YAML needs no quotes.
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, coerce_numbers_to_str=True
    )

    var: VariableName


class EqualsCondition(_VariableTest):
    """``{var: plan, equals: Pro}``."""

    equals: str

    def matches(self, variables: Mapping[str, object]) -> bool:
        value = _text_of(variables.get(self.var))
        return value is not None and _fold(value) == _fold(self.equals)


class InCondition(_VariableTest):
    """``{var: plan, in: [Basic, Pro]}``."""

    in_: list[str] = Field(alias="in", min_length=1)

    def matches(self, variables: Mapping[str, object]) -> bool:
        value = _text_of(variables.get(self.var))
        return value is not None and _fold(value) in {_fold(option) for option in self.in_}


class ExistsCondition(_VariableTest):
    """``{var: crm, exists: true}``; an empty string counts as absent, like a skipped answer."""

    exists: bool

    def matches(self, variables: Mapping[str, object]) -> bool:
        value = variables.get(self.var)
        return (value is not None and value != "") == self.exists


VariableCondition = EqualsCondition | InCondition | ExistsCondition

_OPERATOR_TAGS: Final = {"equals": "equals", "in": "in", "in_": "in", "exists": "exists"}
_MODEL_TAGS: Final[dict[type[BaseModel], str]] = {
    EqualsCondition: "equals",
    InCondition: "in",
    ExistsCondition: "exists",
}
CONDITION_TAGS: Final = frozenset({*OUTCOME_WHENS, *_MODEL_TAGS.values()})


def _condition_tag(value: Any) -> str | None:
    """Pick the condition kind from its operator key so errors name one shape, not all four."""
    if isinstance(value, BaseModel):
        return _MODEL_TAGS.get(type(value))
    if isinstance(value, Mapping):
        tags = {tag for key, tag in _OPERATOR_TAGS.items() if key in value}
        return tags.pop() if len(tags) == 1 else None
    return value if value in OUTCOME_WHENS else None


Condition = Annotated[
    Annotated[Literal["invalid"], Tag(WHEN_INVALID)]
    | Annotated[Literal["error"], Tag(WHEN_ERROR)]
    | Annotated[EqualsCondition, Tag("equals")]
    | Annotated[InCondition, Tag("in")]
    | Annotated[ExistsCondition, Tag("exists")],
    Discriminator(
        _condition_tag,
        custom_error_type="invalid_condition",
        custom_error_message=(
            "expected 'invalid', 'error' or a mapping with 'var' and exactly one of "
            "'equals', 'in' or 'exists'"
        ),
    ),
]


def _text_of(value: object) -> str | None:
    return None if value is None else str(value)


def _fold(text: str) -> str:
    return text.strip().casefold()
