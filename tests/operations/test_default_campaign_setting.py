"""``PARLEY_DEFAULT_CAMPAIGN`` (the campaign new inbound WhatsApp contacts get) names a
published campaign, used as is; a campaign file still works for the embedded demo (published
and activated at startup, as before); a name nobody published stops the webhook at startup
with what to do, not at the first message. On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from parley.campaign import publishing
from parley.db import Database, queries
from parley.errors import ConfigurationError
from parley.settings import Settings
from parley.vocabulary import CampaignStatus
from tests.operations.driving import ROOT
from webhook.app import default_campaign_name

ONBOARDING = ROOT / "examples/campaigns/onboarding.yaml"
FOLLOW_UP = ROOT / "examples/campaigns/follow_up.yaml"


def test_a_name_is_a_name_and_a_file_is_a_file(tmp_path: Path) -> None:
    no_suffix = tmp_path / "campaign"
    no_suffix.write_text("name: x")

    assert Settings(default_campaign="follow-up").default_campaign_file is None
    assert Settings(default_campaign=ONBOARDING).default_campaign_file == ONBOARDING
    assert Settings(default_campaign="missing.yaml").default_campaign_file == Path("missing.yaml")
    assert Settings(default_campaign=str(no_suffix)).default_campaign_file == no_suffix


async def test_a_campaign_file_is_published_and_active_at_startup(db: Database) -> None:
    async with db.transaction() as session:
        name = await default_campaign_name(session, Settings(default_campaign=ONBOARDING))
    async with db.read() as session:
        state = await queries.campaigns.campaign_state(session, name)
    assert state is not None and state.status == CampaignStatus.ACTIVE


async def test_a_published_campaigns_name_is_used_as_it_is(db: Database) -> None:
    published = await publishing.publish(db, FOLLOW_UP.read_text())
    async with db.transaction() as session:
        name = await default_campaign_name(session, Settings(default_campaign=published.name))
    assert name == published.name
    [summary] = await publishing.list_campaigns(db)
    assert summary.status is CampaignStatus.DRAFT  # the setting does not activate it


async def test_a_name_nobody_published_stops_the_startup_with_what_to_do(db: Database) -> None:
    with pytest.raises(ConfigurationError, match=r"not a published campaign.*campaign publish"):
        async with db.transaction() as session:
            await default_campaign_name(session, Settings(default_campaign="no-such-campaign"))
