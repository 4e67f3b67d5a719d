"""The campaign graph: nodes a conversation visits and the edges between them.

Each node checks only what it can see by itself (field types, WhatsApp limits); how nodes fit
together is checked in ``checks`` so a file gets every problem reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from parley.campaign.conditions import OUTCOME_WHENS, Condition
from parley.campaign.names import EnvName, NodeId, Slug, VariableName
from parley.errors import NotFound

DEFAULT_RETRY: Final = "Sorry, I didn't get that. Please try again."

Outcome = Literal["ok", "invalid", "error"]
"""How a node ended: normally, out of attempts (``when: invalid``), or failed (``when: error``)."""
Validation = Literal["text", "email", "choices"]


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt `max_attempt` must not be ignored silently.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _NodeBase(_Strict):
    id: NodeId

    def templates(self) -> dict[str, str]:
        """Texts that may hold ``{variable}`` placeholders, by field name."""
        return {}


class SendNode(_NodeBase):
    type: Literal["send"] = "send"
    text: str

    def templates(self) -> dict[str, str]:
        return {"text": self.text}


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


class EndNode(_NodeBase):
    type: Literal["end"] = "end"
    text: str | None = None

    def templates(self) -> dict[str, str]:
        return {} if self.text is None else {"text": self.text}


Node = Annotated[SendNode | AskNode | HttpNode | EndNode, Field(discriminator="type")]


class Edge(_Strict):
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    when: Condition | None = None

    @property
    def on_outcome(self) -> bool:
        """An ``invalid`` or ``error`` edge: only taken when the node ended that way."""
        return isinstance(self.when, str) and self.when in OUTCOME_WHENS

    def applies(self, variables: Mapping[str, object], outcome: Outcome) -> bool:
        """Whether a conversation leaving ``source`` with this outcome may follow the edge.

        Outcomes never share edges, so a failed ask cannot slip through a catch-all edge meant
        for valid answers, nor a failed http call through the edge meant for its success.
        """
        if isinstance(self.when, str):
            return outcome == self.when
        if outcome != "ok":
            return False
        return self.when is None or self.when.matches(variables)


class Campaign(_Strict):
    """A campaign graph. Use ``parse_campaign``/``load_campaign``: they also check the graph."""

    name: Slug
    version: int = Field(default=1, ge=1)
    description: str = ""
    channel: str = "whatsapp"
    env: dict[EnvName, str] = Field(default_factory=dict)
    error_text: str | None = None
    start: str
    nodes: list[Node]
    edges: list[Edge]

    _nodes_by_id: dict[str, Node] = PrivateAttr(default_factory=dict)
    _edges_by_source: dict[str, list[Edge]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        self._nodes_by_id = {node.id: node for node in self.nodes}
        for edge in self.edges:
            self._edges_by_source.setdefault(edge.source, []).append(edge)

    def node(self, node_id: str) -> Node:
        try:
            return self._nodes_by_id[node_id]
        except KeyError:
            raise NotFound(
                f"campaign {self.name!r} v{self.version} has no node {node_id!r}"
            ) from None

    def next_node(
        self,
        node_id: str,
        variables: Mapping[str, object],
        *,
        outcome: Outcome = "ok",
    ) -> str | None:
        """The first matching edge's target, in file order; None ends the conversation.

        An unknown ``node_id`` raises ``NotFound`` rather than ending the conversation quietly.
        """
        self.node(node_id)
        edges = self._edges_by_source.get(node_id, [])
        return next((edge.target for edge in edges if edge.applies(variables, outcome)), None)


def _require_unique(what: str, values: list[str]) -> None:
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(map(repr, repeated))}")
