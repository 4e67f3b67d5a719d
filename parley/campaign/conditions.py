"""Conditions on campaign edges, and the situation (``EdgeContext``) they are judged in.

Text comparisons ignore case and surrounding whitespace: the values come from people typing on
phones, and "pro", "Pro " and "PRO" are the same answer. ``lt``/``gt`` compare numbers, and an
answer typed as "42" counts as the number 42.

Most conditions are judged from the context alone (``condition.matches(ctx)``), among them the
lead conditions (``has_email``, ``has_phone``, ``has_whatsapp``, ``connection_accepted``,
``not_already_contacted``): they read the contact's fields and what the runner looked up about
the lead before the step (``LeadFacts``), so judging them stays pure. Five are plain
words whose meaning depends on the node the edge leaves, so ``Edge.matches`` judges them:
``invalid``, ``error`` and ``taken_over`` (how the node ended), ``replied`` and ``no_reply``
(whether the contact wrote back, and for ``no_reply`` whether the node's timeout has passed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Final, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from parley.campaign.durations import Duration, format_duration
from parley.campaign.names import VariableName
from parley.vocabulary import LINKEDIN_CONNECTED_FIELD, PHONE_FIELDS, WHATSAPP_ACCOUNT_FIELD

Outcome = Literal["ok", "invalid", "error", "taken_over"]
"""How a node ended: normally, out of attempts (``when: invalid``), failed (``when: error``), or
taken over by a person's manual send while its action waited (``when: taken_over``)."""

WHEN_INVALID: Final = "invalid"
"""``when: invalid``: the edge taken once an ask node has used up its attempts."""

WHEN_ERROR: Final = "error"
"""``when: error``: the edge taken when a node fails for good (a provider refused the send, the
http endpoint kept failing); without one, the conversation sends the campaign's ``error_text``
and ends ``failed``."""

WHEN_TAKEN_OVER: Final = "taken_over"
"""``when: taken_over``: a person sent a message by hand (``parley send``) while the node's
outreach action waited; the hand-sent message stands in for the action. Without such an edge
the node is left by its other edges, as if its action had been sent."""

WHEN_REPLIED: Final = "replied"
"""``when: replied``: the contact wrote while the node waited (a wait_for_reply's reply, or a
message during a wait or a delay)."""

WHEN_NO_REPLY: Final = "no_reply"
"""``when: no_reply``: a wait_for_reply node's ``timeout`` passed without a reply."""

OUTCOME_WHENS: Final = frozenset({WHEN_INVALID, WHEN_ERROR, WHEN_TAKEN_OVER})
REPLY_WHENS: Final = frozenset({WHEN_REPLIED, WHEN_NO_REPLY})
WORD_WHENS: Final = OUTCOME_WHENS | REPLY_WHENS


@dataclass(frozen=True)
class LeadFacts:
    """What the runner knows of the lead beyond its fields, looked up before the step so the
    conditions stay pure: the contact's own channel and address, and when another conversation
    with this lead (by any identity of the installation, on any of the lead's addresses) last
    exchanged a message or performed an action (``None``: never, or not looked up because no
    edge of the campaign asks)."""

    channel: str | None = None
    address: str | None = None
    last_contacted_at: datetime | None = None


@dataclass(frozen=True)
class EdgeContext:
    """Everything an edge condition may look at when a conversation might leave a node.

    ``entered_at`` is when the conversation entered the node (before any ``delay``); ``now`` is
    the instant of the decision. Both must be aware and are kept in UTC, so "2d passed" means 48
    hours of real time even across a clock change. ``replied`` says a message from the contact
    arrived while the conversation was at this node (for an ask node: its valid answer).
    ``task_result`` is a task node's result once someone completed it, e.g.
    ``{"outcome": "reached", "notes": "..."}``.
    """

    entered_at: datetime
    now: datetime
    variables: Mapping[str, object] = field(default_factory=dict)
    contact: Mapping[str, object] = field(default_factory=dict)
    replied: bool = False
    outcome: Outcome = "ok"
    task_result: Mapping[str, object] | None = None
    lead: LeadFacts = field(default_factory=LeadFacts)

    def __post_init__(self) -> None:
        for name in ("entered_at", "now"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.utcoffset() is None:
                raise ValueError(f"EdgeContext.{name} must be an aware datetime, got {value!r}")
            object.__setattr__(self, name, value.astimezone(UTC))

    @property
    def elapsed(self) -> timedelta:
        """How long the conversation has been at the node."""
        return self.now - self.entered_at


_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def _literal_text(value: object) -> object:
    """YAML ``true``/``false`` compare as the words, so ``equals: true`` matches a ``set`` flag."""
    return str(value).lower() if isinstance(value, bool) else value


def _literal_number(value: object) -> object:
    if isinstance(value, bool) or (isinstance(value, str) and not _NUMBER.fullmatch(value.strip())):
        raise ValueError(f"{value!r} is not a number: lt and gt compare numbers, e.g. lt: 50")
    return value


Text = Annotated[str, BeforeValidator(_literal_text)]
Number = Annotated[float, BeforeValidator(_literal_number), Field(allow_inf_nan=False)]


class Comparison(BaseModel):
    """A test of one conversation variable (``var``) or one contact field (``field``)."""

    # Numbers are accepted as strings so `equals: 3` in YAML needs no quotes.
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, coerce_numbers_to_str=True
    )

    var: VariableName | None = None
    contact_field: VariableName | None = Field(default=None, alias="field")

    @model_validator(mode="after")
    def _one_subject(self) -> Comparison:
        if (self.var is None) == (self.contact_field is None):
            raise ValueError(
                "a condition tests either 'var' (a conversation variable) or 'field' "
                "(a contact field, e.g. country): name exactly one"
            )
        return self

    @property
    def subject(self) -> tuple[Literal["var", "field"], str]:
        if self.var is not None:
            return "var", self.var
        assert self.contact_field is not None
        return "field", self.contact_field

    def value_in(self, ctx: EdgeContext) -> object:
        if self.var is not None:
            return ctx.variables.get(self.var)
        return ctx.contact.get(self.contact_field or "")

    def matches(self, ctx: EdgeContext) -> bool:
        return self.test(self.value_in(ctx))

    def test(self, value: object) -> bool:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @property
    def requires_value(self) -> bool:
        """True when the condition can only match a set variable, so an edge guarded by it
        may read that variable (``exists: false`` and ``not_equals`` match unset ones too)."""
        return True


class EqualsCondition(Comparison):
    """``{var: plan, equals: Pro}``."""

    equals: Text

    def test(self, value: object) -> bool:
        return _same(value, self.equals)


class NotEqualsCondition(Comparison):
    """``{field: country, not_equals: ES}``; an unset value is not equal to anything."""

    not_equals: Text

    def test(self, value: object) -> bool:
        return not _same(value, self.not_equals)

    @property
    def requires_value(self) -> bool:
        return False


class InCondition(Comparison):
    """``{var: plan, in: [Basic, Pro]}``."""

    in_: list[Text] = Field(alias="in", min_length=1)

    def test(self, value: object) -> bool:
        return any(_same(value, option) for option in self.in_)


class ContainsCondition(Comparison):
    """``{var: message, contains: stop}``: a word inside a text, or an item of a list."""

    contains: Text

    def test(self, value: object) -> bool:
        if isinstance(value, list | tuple | set | frozenset):
            return any(_same(item, self.contains) for item in value)
        text = _text_of(value)
        return text is not None and _fold(self.contains) in _fold(text)


class ExistsCondition(Comparison):
    """``{var: crm, exists: true}``; an empty string counts as absent, like a skipped answer."""

    exists: bool

    def test(self, value: object) -> bool:
        return (value is not None and value != "") == self.exists

    @property
    def requires_value(self) -> bool:
        return self.exists


class LessThanCondition(Comparison):
    """``{var: score, lt: 5}``; false when the value is not a number."""

    lt: Number

    def test(self, value: object) -> bool:
        number = _number(value)
        return number is not None and number < self.lt


class GreaterThanCondition(Comparison):
    """``{var: score, gt: 5}``; false when the value is not a number."""

    gt: Number

    def test(self, value: object) -> bool:
        number = _number(value)
        return number is not None and number > self.gt


class TimePassedCondition(BaseModel):
    """``{time_passed: 2d}``: that long since the conversation entered the edge's source node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_passed: Duration

    def due(self, ctx: EdgeContext) -> datetime:
        return ctx.entered_at + self.time_passed

    def matches(self, ctx: EdgeContext) -> bool:
        return ctx.now >= self.due(ctx)

    def __str__(self) -> str:
        return f"time_passed: {format_duration(self.time_passed)}"


class TaskResultCondition(BaseModel):
    """``{task_result: reached}``: the source task's result has that outcome."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_result: VariableName

    def matches(self, ctx: EdgeContext) -> bool:
        if ctx.task_result is None:
            return False
        outcome = _text_of(ctx.task_result.get("outcome"))
        return outcome is not None and _fold(outcome) == _fold(self.task_result)


_E164 = re.compile(r"\+[1-9]\d{6,14}")
_PHONE_PUNCTUATION = re.compile(r"[\s().-]")


def usable_email(value: object) -> bool:
    """A syntactically deliverable address (no DNS look-up: conditions do no I/O)."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def usable_phone(value: object) -> bool:
    """An E.164 number (``+`` then 7 to 15 digits, no leading 0), spaces, dots, dashes and
    brackets ignored; WhatsApp ids without the ``+`` count too (the Cloud API drops it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return False
    number = _PHONE_PUNCTUATION.sub("", value.strip())
    return bool(_E164.fullmatch(number if number.startswith("+") else f"+{number}"))


def lead_email(ctx: EdgeContext) -> object:
    """An email contact's own address, else its ``email`` field."""
    if ctx.lead.channel == "email" and ctx.lead.address:
        return ctx.lead.address
    return ctx.contact.get("email")


def lead_phones(ctx: EdgeContext) -> list[object]:
    """A WhatsApp contact's own number, then its ``phone`` and ``whatsapp`` fields."""
    own = [ctx.lead.address] if ctx.lead.channel == "whatsapp" and ctx.lead.address else []
    return own + [ctx.contact.get(name) for name in PHONE_FIELDS]


class _LeadCondition(BaseModel):
    """A condition on the lead, written as a word (``when: has_email``) or with the expected
    answer (``when: {has_email: false}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    word: ClassVar[str]
    fields_read: ClassVar[frozenset[str]]
    """Contact fields the answer depends on: a ``field_changed`` signal setting one of them
    makes a waiting run look again."""

    @model_validator(mode="before")
    @classmethod
    def _from_word(cls, value: object) -> object:
        return {cls.word: True} if value == cls.word else value

    @property
    def expected(self) -> bool:
        return bool(getattr(self, self.word))

    def holds(self, ctx: EdgeContext) -> bool:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def matches(self, ctx: EdgeContext) -> bool:
        return self.holds(ctx) == self.expected

    def __str__(self) -> str:
        return self.word if self.expected else f"{{{self.word}: false}}"


class HasEmailCondition(_LeadCondition):
    """``has_email``: the lead has a usable email address (its own, or its ``email`` field)."""

    word: ClassVar[str] = "has_email"
    fields_read: ClassVar[frozenset[str]] = frozenset({"email"})
    has_email: bool = True

    def holds(self, ctx: EdgeContext) -> bool:
        return usable_email(lead_email(ctx))


class HasPhoneCondition(_LeadCondition):
    """``has_phone``: the lead has a usable E.164 phone number."""

    word: ClassVar[str] = "has_phone"
    fields_read: ClassVar[frozenset[str]] = frozenset(PHONE_FIELDS)
    has_phone: bool = True

    def holds(self, ctx: EdgeContext) -> bool:
        return any(usable_phone(phone) for phone in lead_phones(ctx))


class HasWhatsAppCondition(_LeadCondition):
    """``has_whatsapp``: the lead's phone is (as far as anyone can tell) a WhatsApp account.

    The WhatsApp Cloud API cannot say so before a send: until one is tried it means "has a
    phone"; once WhatsApp answered a send with 131026 (not a WhatsApp user) the contact's
    ``whatsapp_account`` field is false and so is this."""

    word: ClassVar[str] = "has_whatsapp"
    fields_read: ClassVar[frozenset[str]] = frozenset({*PHONE_FIELDS, WHATSAPP_ACCOUNT_FIELD})
    has_whatsapp: bool = True

    def holds(self, ctx: EdgeContext) -> bool:
        if ctx.contact.get(WHATSAPP_ACCOUNT_FIELD) is False:
            return False
        return any(usable_phone(phone) for phone in lead_phones(ctx))


class ConnectionAcceptedCondition(_LeadCondition):
    """``connection_accepted``: the lead accepted the LinkedIn seat's invitation (the gateway's
    ``invitation.accepted`` webhook set the contact's ``linkedin_connected`` field)."""

    word: ClassVar[str] = "connection_accepted"
    fields_read: ClassVar[frozenset[str]] = frozenset({LINKEDIN_CONNECTED_FIELD})
    connection_accepted: bool = True

    def holds(self, ctx: EdgeContext) -> bool:
        value = ctx.contact.get(LINKEDIN_CONNECTED_FIELD)
        return value is True or (isinstance(value, str) and _fold(value) == "true")


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    within: Duration


class NotAlreadyContactedCondition(BaseModel):
    """``{not_already_contacted: {within: 90d}}``: no other conversation with this lead, by any
    identity of the installation, exchanged a message or performed an action within the window
    (judged when the edge is, from ``LeadFacts.last_contacted_at``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    not_already_contacted: Window

    @property
    def within(self) -> timedelta:
        return self.not_already_contacted.within

    def matches(self, ctx: EdgeContext) -> bool:
        last = ctx.lead.last_contacted_at
        return last is None or ctx.now - last >= self.within

    def __str__(self) -> str:
        return f"not_already_contacted: {{within: {format_duration(self.within)}}}"


LeadCondition = (
    HasEmailCondition
    | HasPhoneCondition
    | HasWhatsAppCondition
    | ConnectionAcceptedCondition
    | NotAlreadyContactedCondition
)


def fields_read(condition: object) -> frozenset[str]:
    """The contact fields a lead condition's answer depends on (none for other conditions)."""
    return condition.fields_read if isinstance(condition, _LeadCondition) else frozenset()


def lead_condition_answers(whens: object) -> set[tuple[str, bool]]:
    """``(word, expected)`` of the lead conditions among ``whens``: ``has_email`` and
    ``{has_email: false}`` on one node cover every case between them."""
    conditions = whens if isinstance(whens, list | tuple) else []
    return {(c.word, c.expected) for c in conditions if isinstance(c, _LeadCondition)}


LEAD_WORDS: Final = frozenset({"has_email", "has_phone", "has_whatsapp", "connection_accepted"})


ComparisonCondition = (
    EqualsCondition
    | NotEqualsCondition
    | InCondition
    | ContainsCondition
    | ExistsCondition
    | LessThanCondition
    | GreaterThanCondition
)
VariableCondition = ComparisonCondition  # the name used before contact fields existed
ObjectCondition = ComparisonCondition | TimePassedCondition | TaskResultCondition | LeadCondition

_OPERATOR_TAGS: Final = {
    "equals": "equals",
    "not_equals": "not_equals",
    "in": "in",
    "in_": "in",
    "contains": "contains",
    "exists": "exists",
    "lt": "lt",
    "gt": "gt",
    "time_passed": "time_passed",
    "task_result": "task_result",
    "has_email": "has_email",
    "has_phone": "has_phone",
    "has_whatsapp": "has_whatsapp",
    "connection_accepted": "connection_accepted",
    "not_already_contacted": "not_already_contacted",
}
_MODEL_TAGS: Final[dict[type[BaseModel], str]] = {
    EqualsCondition: "equals",
    NotEqualsCondition: "not_equals",
    InCondition: "in",
    ContainsCondition: "contains",
    ExistsCondition: "exists",
    LessThanCondition: "lt",
    GreaterThanCondition: "gt",
    TimePassedCondition: "time_passed",
    TaskResultCondition: "task_result",
    HasEmailCondition: "has_email",
    HasPhoneCondition: "has_phone",
    HasWhatsAppCondition: "has_whatsapp",
    ConnectionAcceptedCondition: "connection_accepted",
    NotAlreadyContactedCondition: "not_already_contacted",
}
CONDITION_TAGS: Final = frozenset({*WORD_WHENS, *_MODEL_TAGS.values()})


def _condition_tag(value: Any) -> str | None:
    """Pick the condition kind from its operator key so errors name one shape, not all of them."""
    if isinstance(value, BaseModel):
        return _MODEL_TAGS.get(type(value))
    if isinstance(value, Mapping):
        tags = {tag for key, tag in _OPERATOR_TAGS.items() if key in value}
        return tags.pop() if len(tags) == 1 else None
    if isinstance(value, str) and value in LEAD_WORDS:
        return value
    return value if isinstance(value, str) and value in WORD_WHENS else None


Condition = Annotated[
    Annotated[Literal["invalid"], Tag(WHEN_INVALID)]
    | Annotated[Literal["error"], Tag(WHEN_ERROR)]
    | Annotated[Literal["taken_over"], Tag(WHEN_TAKEN_OVER)]
    | Annotated[Literal["replied"], Tag(WHEN_REPLIED)]
    | Annotated[Literal["no_reply"], Tag(WHEN_NO_REPLY)]
    | Annotated[EqualsCondition, Tag("equals")]
    | Annotated[NotEqualsCondition, Tag("not_equals")]
    | Annotated[InCondition, Tag("in")]
    | Annotated[ContainsCondition, Tag("contains")]
    | Annotated[ExistsCondition, Tag("exists")]
    | Annotated[LessThanCondition, Tag("lt")]
    | Annotated[GreaterThanCondition, Tag("gt")]
    | Annotated[TimePassedCondition, Tag("time_passed")]
    | Annotated[TaskResultCondition, Tag("task_result")]
    | Annotated[HasEmailCondition, Tag("has_email")]
    | Annotated[HasPhoneCondition, Tag("has_phone")]
    | Annotated[HasWhatsAppCondition, Tag("has_whatsapp")]
    | Annotated[ConnectionAcceptedCondition, Tag("connection_accepted")]
    | Annotated[NotAlreadyContactedCondition, Tag("not_already_contacted")],
    Discriminator(
        _condition_tag,
        custom_error_type="invalid_condition",
        custom_error_message=(
            "expected 'invalid', 'error', 'replied', 'no_reply', 'taken_over', "
            "'has_email', 'has_phone', 'has_whatsapp', 'connection_accepted' (or e.g. "
            "{has_email: false}), {not_already_contacted: {within: 90d}}, {time_passed: 2d}, "
            "{task_result: <outcome>} or a mapping with 'var' or 'field' and exactly one of "
            "'equals', 'not_equals', 'in', 'contains', 'exists', 'lt' or 'gt'"
        ),
    ),
]


def _same(value: object, literal: str) -> bool:
    """Equal as numbers when the value is a number (3.0 equals "3"), else as folded text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = _number(literal)
        if number is not None:
            return value == number
    text = _text_of(value)
    return text is not None and _fold(text) == _fold(literal)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value) if abs(value) < 1e308 else math.inf
        return number if math.isfinite(number) else None
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _text_of(value: object) -> str | None:
    return None if value is None else str(value)


def _fold(text: str) -> str:
    return text.strip().casefold()
