"""The nodes of a campaign graph, one class per ``type``.

Each node checks only what it can see by itself (field types, durations, expressions); how nodes
fit together is checked in ``checks`` so a file gets every problem reported at once.

Any node may carry ``delay: 2d``: the conversation waits that long after entering the node
before doing what the node says. A node's own time rules (its delay, a wait's wake-up time, a
wait_for_reply's timeout) live here, next to the fields they read, so the planner and the
validator agree on them.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    create_model,
    field_validator,
    model_validator,
)

from parley.campaign.conditions import EdgeContext
from parley.campaign.durations import (
    Duration,
    next_local_time,
    parse_clock,
    parse_weekday,
)
from parley.campaign.expressions import Expression, parse_expression
from parley.campaign.names import NodeId, VariableName
from parley.campaign.templates import placeholders, render
from parley.vocabulary import ActionType

DEFAULT_RETRY: Final = "Sorry, I didn't get that. Please try again."
DEFAULT_REPLY_TIMEOUT: Final = timedelta(days=14)

Validation = Literal["text", "email", "choices"]
FieldKind = Literal["text", "number", "datetime", "bool"]
Weekday = Annotated[str, BeforeValidator(parse_weekday)]
ClockTime = Annotated[dt.time, BeforeValidator(parse_clock)]


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt `max_attempt` must not be ignored silently.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _NodeBase(_Strict):
    id: NodeId
    delay: Duration | None = None

    def templates(self) -> dict[str, str]:
        """Texts that may hold ``{variable}`` placeholders, by field name."""
        return {}

    def contact_templates(self) -> dict[str, str]:
        """The templates a contact gets to read, so channel limits apply to them."""
        return self.templates()

    def variables_read(self) -> Iterator[tuple[str, str]]:
        """``(field, variable)`` for every variable the node reads before setting it itself."""
        for field, template in self.templates().items():
            for name in dict.fromkeys(placeholders(template)):
                yield field, name

    def assigned(self) -> tuple[str, ...]:
        """Variables the node sets when it finishes normally."""
        return ()

    def ready_at(self, entered_at: datetime) -> datetime:
        """When the node may do its work: after its ``delay``, if any."""
        return entered_at + self.delay if self.delay else entered_at

    def waiting(self, ctx: EdgeContext, zone: ZoneInfo) -> bool:
        """Whether the node still waits (its delay, a wait, an answer, a result): while it does,
        only edges that interrupt a wait (``replied``, ``no_reply``, ``time_passed``) apply."""
        return ctx.now < self.ready_at(ctx.entered_at)

    def wake_at(self, entered_at: datetime, zone: ZoneInfo) -> datetime | None:
        """When the node's own wait ends; ``None`` for nodes whose wait is not on the clock."""
        return self.ready_at(entered_at) if self.delay else None


_NO_TEXT_ACTIONS: Final = frozenset(
    {"linkedin_profile_visit", "linkedin_voice", "linkedin_like_post", "linkedin_attachment"}
)
"""Actions that need no ``text`` (an attachment's text is an optional message beside it)."""
_FILE_ACTIONS: Final = frozenset({"linkedin_attachment", "linkedin_voice"})
_TEXTLESS_ACTIONS: Final = frozenset(
    {"linkedin_profile_visit", "linkedin_voice", "linkedin_like_post"}
)


def action_fields_problem(
    action: str | None,
    text: str,
    template: str | None,
    file: str | None,
    post: str | None,
) -> str | None:
    """What an action's fields lack or have too much of (a send node's, a bundle member's)."""
    if not text and action not in _NO_TEXT_ACTIONS:
        return (
            "a send node needs 'text' (only a linkedin_profile_visit, linkedin_attachment, "
            "linkedin_voice or linkedin_like_post has none)"
        )
    if text and action in _TEXTLESS_ACTIONS:
        return f"a {action} action sends no text: remove 'text'"
    if action == "whatsapp_template" and not template:
        return "a whatsapp_template action needs 'template' (its approved name)"
    if action in _FILE_ACTIONS and not file:
        return f"a {action} action needs 'file' (the URL the gateway downloads it from)"
    if file is not None and action not in _FILE_ACTIONS:
        return "'file' only goes with a linkedin_attachment or linkedin_voice action"
    if action == "linkedin_like_post" and not post:
        return "a linkedin_like_post action needs 'post' (the post's URL, e.g. '{last_post}')"
    if post is not None and action != "linkedin_like_post":
        return "'post' only goes with a linkedin_like_post action"
    return None


def _url_template(url: str | None) -> str | None:
    """An http(s) URL, or a template whose placeholders decide it when it is rendered."""
    if url is None or url.startswith("{") or "{" in urlsplit(url).netloc:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return url


class _ActionFields(_Strict):
    """What an outreach action carries; rendered when its node queues it."""

    text: str = ""
    subject: str | None = None  # an email's subject
    template: str | None = None  # a WhatsApp template's name; ``text`` fills its one parameter
    file: str | None = None  # an attachment's or voice message's URL (the gateway fetches it)
    post: str | None = None  # the URL of the post a linkedin_like_post likes

    @field_validator("file")
    @classmethod
    def _file_is_a_url(cls, file: str | None) -> str | None:
        return _url_template(file)

    def action_templates(self, prefix: str = "") -> dict[str, str]:
        fields = {
            "text": self.text,
            "subject": self.subject,
            "file": self.file,
            "post": self.post,
        }
        return {
            f"{prefix}{name}": value
            for name, value in fields.items()
            if value is not None and (value or name == "text")
        }


class SendNode(_ActionFields, _NodeBase):
    """Sends ``text``. With ``action`` (an outreach action type: ``email``, ``linkedin_message``,
    ``linkedin_connection``, ``linkedin_inmail``, ``linkedin_profile_visit``,
    ``linkedin_attachment``, ``linkedin_voice``, ``linkedin_like_post``, ``whatsapp_template``)
    it is not sent by the conversation itself: it is queued for the sender identity's
    dispatcher, which performs it within the identity's working hours and limits, and the
    conversation waits for the outcome (``when: error`` if it failed for good)."""

    type: Literal["send"] = "send"
    action: ActionType | None = None

    @model_validator(mode="after")
    def _fields_fit_the_action(self) -> SendNode:
        problem = action_fields_problem(self.action, self.text, self.template, self.file, self.post)
        if problem is not None:
            raise ValueError(problem)
        return self

    def templates(self) -> dict[str, str]:
        return self.action_templates()

    def contact_templates(self) -> dict[str, str]:
        return {} if self.action is not None else self.templates()


class BundleAction(_ActionFields):
    """One action of a bundle: the fields of a send node with an ``action``."""

    action: ActionType

    @model_validator(mode="after")
    def _fields_fit_the_action(self) -> BundleAction:
        problem = action_fields_problem(self.action, self.text, self.template, self.file, self.post)
        if problem is not None:
            raise ValueError(problem)
        return self


class BundleNode(_NodeBase):
    """Several outreach actions of the conversation's identity performed as one unit, in order
    (e.g. a profile visit then a connection request).

    Each is an ordinary action: queued when the one before it was sent, it has its own
    idempotency key, counts against its own type's caps and spacing, and passes the
    dispatcher's freshness check on its own. A capped one waits in the queue like any action;
    the node is left when the last one is sent. One that fails for good takes the node's
    ``when: error`` edge (the rest are not performed); a reply meanwhile interrupts it as it
    would a send node's action. ``attempts`` on the row counts the actions already sent."""

    type: Literal["bundle"] = "bundle"
    actions: list[BundleAction] = Field(min_length=2)

    def templates(self) -> dict[str, str]:
        texts: dict[str, str] = {}
        for index, member in enumerate(self.actions):
            texts.update(member.action_templates(f"actions[{index}]."))
        return texts

    def contact_templates(self) -> dict[str, str]:
        return {}


class Choice(_Strict):
    """A reply button; whether it fits is the channel's to say (``checks``)."""

    id: str = Field(min_length=1)
    title: str = Field(min_length=1)


class AskNode(_NodeBase):
    """A question whose answer is stored in ``var``.

    The YAML key ``validate`` is read into ``validation`` because ``validate`` is taken by
    pydantic's ``BaseModel``.
    """

    type: Literal["ask"] = "ask"
    prompt: str
    var: VariableName
    validation: Validation = Field(default="text", alias="validate")
    choices: list[Choice] = Field(default_factory=list)
    retry: str = DEFAULT_RETRY
    max_attempts: int = Field(default=3, ge=1)

    @field_validator("retry", mode="before")
    @classmethod
    def _default_retry(cls, retry: object) -> object:
        return DEFAULT_RETRY if retry is None else retry

    @field_validator("choices")
    @classmethod
    def _distinct_choices(cls, choices: list[Choice]) -> list[Choice]:
        _require_unique("choice ids", [choice.id for choice in choices])
        # Titles are matched case-insensitively against typed answers, so they must differ.
        _require_unique("choice titles", [choice.title.casefold() for choice in choices])
        return choices

    @model_validator(mode="after")
    def _choices_match_validation(self) -> AskNode:
        if self.validation == "choices" and not self.choices:
            raise ValueError("'validate: choices' needs at least one choice")
        if self.validation != "choices" and self.choices:
            raise ValueError(
                f"choices are only used with 'validate: choices', not 'validate: {self.validation}'"
            )
        return self

    def templates(self) -> dict[str, str]:
        return {"prompt": self.prompt, "retry": self.retry}

    def assigned(self) -> tuple[str, ...]:
        return (self.var,)

    def waiting(self, ctx: EdgeContext, zone: ZoneInfo) -> bool:
        """An ask waits until its valid answer (``ctx.replied``) or its last bad one."""
        return super().waiting(ctx, zone) or not ctx.replied


class HttpNode(_NodeBase):
    """POSTs the ``send`` variables as a JSON object; the response lands in ``result_var``.

    The URL usually starts with a configured base (``{env.CRM_URL}/contacts``) so the same
    campaign runs against a local CRM under ``parley dev`` and the real one in production.
    Headers may carry ``{secret.name}`` (a Prefect Secret block), resolved only at send time.
    """

    type: Literal["http"] = "http"
    url: str
    send: list[VariableName] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    result_var: VariableName | None = None
    timeout_seconds: float = Field(default=10, gt=0)

    @field_validator("url")
    @classmethod
    def _is_http_url(cls, url: str) -> str:
        if url.startswith("{env."):
            return url  # the configured base is checked once its value is known
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url

    def templates(self) -> dict[str, str]:
        return {"url": self.url, **{f"headers.{k}": v for k, v in self.headers.items()}}

    def contact_templates(self) -> dict[str, str]:
        return {}

    def variables_read(self) -> Iterator[tuple[str, str]]:
        yield from super().variables_read()
        for name in self.send:
            yield "send", name

    def assigned(self) -> tuple[str, ...]:
        return () if self.result_var is None else (self.result_var,)


class EndNode(_NodeBase):
    type: Literal["end"] = "end"
    text: str | None = None

    def templates(self) -> dict[str, str]:
        return {} if self.text is None else {"text": self.text}


class Until(_Strict):
    """``{weekday: tue, time: "10:00"}``: the next such wall-clock time, in the contact's zone."""

    weekday: Weekday | None = None
    time: ClockTime


class WaitNode(_NodeBase):
    """Waits ``duration`` (elapsed time) or ``until`` a local time, then follows its edges.

    A message from the contact during the wait takes the node's ``when: replied`` edge if it has
    one, else the campaign's ``on_reply``.
    """

    type: Literal["wait"] = "wait"
    duration: Duration | None = None
    until: Until | None = None

    @model_validator(mode="after")
    def _one_kind_of_wait(self) -> WaitNode:
        if (self.duration is None) == (self.until is None):
            raise ValueError(
                "a wait node needs exactly one of 'duration' (e.g. duration: 2d) or 'until' "
                '(e.g. until: {weekday: tue, time: "10:00"})'
            )
        return self

    def wake_at(self, entered_at: datetime, zone: ZoneInfo) -> datetime:
        start = self.ready_at(entered_at)
        if self.duration is not None:
            return start + self.duration
        assert self.until is not None
        return next_local_time(start, self.until.weekday, self.until.time, zone)

    def waiting(self, ctx: EdgeContext, zone: ZoneInfo) -> bool:
        return ctx.now < self.wake_at(ctx.entered_at, zone)


class WaitForReplyNode(_NodeBase):
    """Waits for the contact's next message, at most ``timeout``; the text goes into ``var``.

    Its edges say ``when: replied`` and ``when: no_reply`` (the timeout passed first).
    """

    type: Literal["wait_for_reply"] = "wait_for_reply"
    timeout: Duration = DEFAULT_REPLY_TIMEOUT
    var: VariableName | None = None

    def assigned(self) -> tuple[str, ...]:
        return () if self.var is None else (self.var,)

    def reply_deadline(self, entered_at: datetime) -> datetime:
        """When ``no_reply`` becomes true: ``timeout`` after the node's delay, if any."""
        return self.ready_at(entered_at) + self.timeout

    def waiting(self, ctx: EdgeContext, zone: ZoneInfo) -> bool:
        return not ctx.replied


class BranchNode(_NodeBase):
    """Does nothing but choose among its edges: routing in one place, not in every sender."""

    type: Literal["branch"] = "branch"


class ExpressionValue(_Strict):
    """``{expr: "score + 1"}``: computed by ``expressions``, checked when the file is loaded."""

    expr: str
    _parsed: Expression = PrivateAttr()

    @field_validator("expr", mode="before")
    @classmethod
    def _valid_expression(cls, expr: object) -> object:
        parse_expression(expr)
        return expr

    def model_post_init(self, context: Any, /) -> None:
        self._parsed = parse_expression(self.expr)

    @property
    def expression(self) -> Expression:
        return self._parsed


def _set_value_kind(value: Any) -> str | None:
    if isinstance(value, ExpressionValue | Mapping):
        return "expr"
    return "literal" if isinstance(value, bool | int | float | str) else None


SetValue = Annotated[
    Annotated[ExpressionValue, Tag("expr")] | Annotated[bool | int | float | str, Tag("literal")],
    Discriminator(
        _set_value_kind,
        custom_error_type="invalid_set_value",
        custom_error_message=(
            'expected a text (may use {variables}), a number, true/false or {expr: "..."}'
        ),
    ),
]
"""What ``set:`` assigns: a template (``"Hi {name}"``), a number, a flag or an expression."""


class SetNode(_NodeBase):
    """Assigns variables, in the order written: a later value may read an earlier one."""

    type: Literal["set"] = "set"
    assignments: dict[VariableName, SetValue] = Field(alias="set", min_length=1)

    def templates(self) -> dict[str, str]:
        return {f"set.{k}": v for k, v in self.assignments.items() if isinstance(v, str)}

    def contact_templates(self) -> dict[str, str]:
        return {}

    def variables_read(self) -> Iterator[tuple[str, str]]:
        earlier: set[str] = set()
        for key, value in self.assignments.items():
            for name in _names_in(value):
                if name not in earlier:
                    yield f"set.{key}", name
            earlier.add(key)

    def assigned(self) -> tuple[str, ...]:
        return tuple(self.assignments)

    def evaluate(
        self, variables: Mapping[str, object], env: Mapping[str, str] | None = None
    ) -> dict[str, object]:
        """The values to assign, in order; ``ExpressionError`` if an expression fails."""
        scope = dict(variables)
        values: dict[str, object] = {}
        for key, value in self.assignments.items():
            if isinstance(value, ExpressionValue):
                result = value.expression.evaluate(scope)
            elif isinstance(value, str):
                result = render(value, scope, env)
            else:
                result = value
            scope[key] = values[key] = result
        return values


def _names_in(value: SetValue) -> Iterator[str]:
    if isinstance(value, ExpressionValue):
        yield from sorted(value.expression.names)
    elif isinstance(value, str):
        yield from dict.fromkeys(placeholders(value))


class TaskNode(_NodeBase):
    """A to-do for a person (call the contact, check a document), completed from outside.

    The conversation waits until someone submits a result, validated by ``result_model()``:
    an ``outcome`` among ``outcomes`` plus the typed ``fields``. The result is stored in ``var``
    and the edges choose by ``when: {task_result: <outcome>}``.
    """

    type: Literal["task"] = "task"
    title: str = Field(min_length=1)
    description: str | None = None
    var: VariableName
    outcomes: list[VariableName] = Field(min_length=1)
    fields: dict[VariableName, FieldKind] = Field(default_factory=dict)

    @field_validator("outcomes")
    @classmethod
    def _distinct_outcomes(cls, outcomes: list[str]) -> list[str]:
        _require_unique("outcomes", [outcome.casefold() for outcome in outcomes])
        return outcomes

    @field_validator("fields")
    @classmethod
    def _no_outcome_field(cls, fields: dict[str, FieldKind]) -> dict[str, FieldKind]:
        if "outcome" in fields:
            raise ValueError("'outcome' is always part of a task result; name the field otherwise")
        return fields

    def templates(self) -> dict[str, str]:
        texts = {"title": self.title}
        return texts if self.description is None else {**texts, "description": self.description}

    def contact_templates(self) -> dict[str, str]:
        return {}  # read by staff, not sent to the contact

    def assigned(self) -> tuple[str, ...]:
        return (self.var,)

    def waiting(self, ctx: EdgeContext, zone: ZoneInfo) -> bool:
        return ctx.task_result is None

    def result_model(self) -> builtins.type[BaseModel]:
        """The pydantic model a result must satisfy: Prefect's resume form is generated from it
        and the CLI and REST API validate against it. Extra fields are optional."""
        return _result_model(
            self.id, tuple(self.outcomes), tuple(self.fields.items()), self.description
        )


_FIELD_TYPES: Final[Mapping[str, Any]] = {
    "text": str,
    "number": float,
    "datetime": AwareDatetime,
    "bool": bool,
}


@lru_cache(maxsize=256)
def _result_model(
    node_id: str,
    outcomes: tuple[str, ...],
    fields: tuple[tuple[str, str], ...],
    description: str | None,
) -> type[BaseModel]:
    outcome_type: Any = Literal[outcomes]
    definitions: dict[str, Any] = {
        "outcome": (outcome_type, Field(description=f"One of: {', '.join(outcomes)}")),
    }
    for name, kind in fields:
        definitions[name] = (_FIELD_TYPES[kind] | None, Field(default=None))
    title = "".join(part.capitalize() for part in node_id.replace("-", "_").split("_"))
    model: type[BaseModel] = create_model(
        f"{title or 'Task'}Result",
        __config__=ConfigDict(extra="forbid"),
        __doc__=description or f"The result of task {node_id!r}.",
        **definitions,
    )
    return model


PLACEMENT_OUTCOMES: Final = ("started", "skipped", "invalid")
"""What ``add_to_campaign`` made of the lead (``{task_result: <outcome>}`` edges)."""


class AddToCampaignNode(_NodeBase):
    """Start this lead in another campaign, as this conversation's identity or ``identity``,
    through the lead import's path and checks (an active conversation with that identity, the
    do-not-contact list, the campaign's inputs from this conversation's variables). Its
    outcome (``started``, ``skipped``, ``invalid``) is the node's ``task_result``."""

    type: Literal["add_to_campaign"] = "add_to_campaign"
    campaign: Annotated[str, Field(min_length=1, max_length=100)]
    identity: int | None = Field(default=None, ge=1)

    @property
    def outcomes(self) -> tuple[str, ...]:
        return PLACEMENT_OUTCOMES


Node = Annotated[
    SendNode
    | BundleNode
    | AskNode
    | HttpNode
    | EndNode
    | WaitNode
    | WaitForReplyNode
    | BranchNode
    | SetNode
    | TaskNode
    | AddToCampaignNode,
    Field(discriminator="type"),
]
NODE_TYPES: Final = (
    "send",
    "bundle",
    "ask",
    "http",
    "end",
    "wait",
    "wait_for_reply",
    "branch",
    "set",
    "task",
    "add_to_campaign",
)
"""Every ``type`` a node may have, in the order the documentation lists them."""

WAITING_TYPES: Final = frozenset({"ask", "wait", "wait_for_reply", "task"})
"""Node types that always wait for something (an answer, the clock, a reply, a person)."""


def _require_unique(what: str, values: list[str]) -> None:
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(map(repr, repeated))}")
