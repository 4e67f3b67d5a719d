"""Campaign graphs: the YAML-defined paths a conversation walks.

Load with ``load_campaign``/``parse_campaign``, which report every problem of a file at once;
walk with ``Campaign.next_node``; judge answers with ``check_answer``; fill texts with ``render``.
"""

from parley.campaign.answers import AnswerCheck, check_answer
from parley.campaign.conditions import (
    WHEN_ERROR,
    WHEN_INVALID,
    Condition,
    EqualsCondition,
    ExistsCondition,
    InCondition,
)
from parley.campaign.loading import campaign_digest, load_campaign, parse_campaign
from parley.campaign.model import (
    DEFAULT_RETRY,
    AskNode,
    Campaign,
    Choice,
    Edge,
    EndNode,
    HttpNode,
    Node,
    Outcome,
    SendNode,
    Validation,
)
from parley.campaign.templates import render, render_secrets, render_url

__all__ = [
    "DEFAULT_RETRY",
    "WHEN_ERROR",
    "WHEN_INVALID",
    "AnswerCheck",
    "AskNode",
    "Campaign",
    "Choice",
    "Condition",
    "Edge",
    "EndNode",
    "EqualsCondition",
    "ExistsCondition",
    "HttpNode",
    "InCondition",
    "Node",
    "Outcome",
    "SendNode",
    "Validation",
    "campaign_digest",
    "check_answer",
    "load_campaign",
    "parse_campaign",
    "render",
    "render_secrets",
    "render_url",
]
