"""Properties: any document either parses or is refused as CampaignInvalid; every generated
valid campaign validates, and walking it never raises."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.campaign import Campaign, EdgeContext, parse_campaign
from parley.campaign.conditions import LeadFacts
from parley.campaign.schema import build_campaign
from parley.errors import CampaignInvalid
from tests.campaign.strategies import (
    campaign_documents,
    campaigns,
    mutated_documents,
    yaml_documents,
)

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THROUGH_YAML = settings(PROPERTY, max_examples=25)  # PyYAML's pure-Python parser is the slow part


def _parses_or_is_refused(document: object) -> None:
    try:
        assert isinstance(build_campaign(document), Campaign)
    except CampaignInvalid as refused:
        assert refused.problems


@THROUGH_YAML
@given(yaml_documents())
def test_any_yaml_shaped_document_parses_or_is_refused(document: object) -> None:
    _parses_or_is_refused(document)
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except yaml.YAMLError:  # e.g. keys YAML cannot write
        return
    with contextlib.suppress(CampaignInvalid):
        parse_campaign(text)


@PROPERTY
@given(mutated_documents())
def test_a_valid_campaign_broken_in_one_spot_parses_or_is_refused(document: object) -> None:
    _parses_or_is_refused(document)


@THROUGH_YAML
@given(campaigns())
def test_generated_campaign_texts_validate(text: str) -> None:
    assert parse_campaign(text).start == "start"


@PROPERTY
@given(campaign_documents())
def test_generated_campaigns_validate(document: dict[str, Any]) -> None:
    assert build_campaign(document).start == "start"


START = datetime(2025, 3, 29, 23, 0, tzinfo=UTC)  # the night Madrid's clocks jump


@st.composite
def _contexts(draw: st.DrawFn) -> dict[str, Any]:
    value = st.one_of(st.none(), st.text(max_size=5), st.integers(), st.floats(), st.booleans())
    return {
        "entered_at": START,
        "now": START + timedelta(minutes=draw(st.integers(0, 60 * 24 * 30))),
        "variables": draw(st.dictionaries(st.sampled_from(["v0", "v1", "v2", "a1", "w2"]), value)),
        "contact": draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "country": value,
                    "timezone": st.sampled_from(["Asia/Tokyo", "Nope", ""]),
                    "email": value,
                    "phone": value,
                    "whatsapp": value,
                    "whatsapp_account": value,
                    "linkedin_connected": value,
                },
            )
        ),
        "replied": draw(st.booleans()),
        "outcome": draw(st.sampled_from(["ok", "ok", "invalid", "error"])),
        "task_result": draw(
            st.none() | st.fixed_dictionaries({"outcome": st.sampled_from(["reached", "busy"])})
        ),
        "lead": LeadFacts(
            draw(st.sampled_from([None, "email", "whatsapp", "linkedin"])),
            draw(st.none() | st.text(max_size=16)),
            draw(st.none() | st.integers(-200, 40).map(lambda d: START + timedelta(days=d))),
        ),
    }


@PROPERTY
@given(campaign_documents(), st.lists(_contexts(), min_size=1, max_size=4))
def test_deciding_where_to_go_never_raises(
    document: dict[str, Any], contexts: list[dict[str, Any]]
) -> None:
    campaign = build_campaign(document)
    for facts in contexts:
        ctx = EdgeContext(**facts)
        for node in campaign.nodes:
            edge = campaign.next_edge(node.id, ctx)
            assert edge is None or edge.source == node.id
            deadline = campaign.next_deadline(node.id, ctx)
            assert deadline is None or deadline > ctx.now
            campaign.departure_triggers(node.id)
