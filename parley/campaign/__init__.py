"""Campaign graphs: the YAML-defined paths a conversation walks.

Load with ``load_campaign``/``parse_campaign``, which report every problem of a file at once;
walk with ``Campaign.next_edge`` (and ``next_deadline`` for when to look again) given an
``EdgeContext``; judge answers with ``check_answer``; fill texts with ``render``.
"""

from parley.campaign.answers import AnswerCheck, check_answer
from parley.campaign.conditions import (
    WHEN_ERROR,
    WHEN_INVALID,
    WHEN_NO_REPLY,
    WHEN_REPLIED,
    Comparison,
    Condition,
    ContainsCondition,
    EdgeContext,
    EqualsCondition,
    ExistsCondition,
    GreaterThanCondition,
    InCondition,
    LessThanCondition,
    NotEqualsCondition,
    TaskResultCondition,
    TimePassedCondition,
)
from parley.campaign.durations import next_local_time, parse_duration
from parley.campaign.expressions import Expression, ExpressionError, parse_expression
from parley.campaign.loading import campaign_digest, load_campaign, parse_campaign
from parley.campaign.model import (
    DEFAULT_RETRY,
    AddToCampaignNode,
    AskNode,
    BranchNode,
    Campaign,
    Choice,
    Edge,
    EndNode,
    HttpNode,
    InactivityTimeout,
    Node,
    Outcome,
    SendNode,
    SetNode,
    TaskNode,
    Trigger,
    Validation,
    WaitForReplyNode,
    WaitNode,
)
from parley.campaign.nodes import Until
from parley.campaign.templates import render, render_secrets, render_url

__all__ = [
    "DEFAULT_RETRY",
    "WHEN_ERROR",
    "WHEN_INVALID",
    "WHEN_NO_REPLY",
    "WHEN_REPLIED",
    "AddToCampaignNode",
    "AnswerCheck",
    "AskNode",
    "BranchNode",
    "Campaign",
    "Choice",
    "Comparison",
    "Condition",
    "ContainsCondition",
    "Edge",
    "EdgeContext",
    "EndNode",
    "EqualsCondition",
    "ExistsCondition",
    "Expression",
    "ExpressionError",
    "GreaterThanCondition",
    "HttpNode",
    "InCondition",
    "InactivityTimeout",
    "LessThanCondition",
    "Node",
    "NotEqualsCondition",
    "Outcome",
    "SendNode",
    "SetNode",
    "TaskNode",
    "TaskResultCondition",
    "TimePassedCondition",
    "Trigger",
    "Until",
    "Validation",
    "WaitForReplyNode",
    "WaitNode",
    "campaign_digest",
    "check_answer",
    "load_campaign",
    "next_local_time",
    "parse_campaign",
    "parse_duration",
    "parse_expression",
    "render",
    "render_secrets",
    "render_url",
]
