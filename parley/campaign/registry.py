"""Campaign versions in the database: install a file, load the version a conversation pinned.

A conversation keeps the campaign version it started on, so editing a YAML file never changes a
conversation that is already under way (old runs finish on old logic, new runs start on new).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign.loading import campaign_digest, parse_campaign
from parley.campaign.model import Campaign
from parley.db import queries
from parley.db.models import CampaignVersion
from parley.vocabulary import CampaignStatus


async def install_campaign(session: AsyncSession, path: Path) -> CampaignVersion:
    """Validate ``path`` and store it as the newest version unless its content is known. A
    campaign installed from a file (the embedded demo's default, ``parley dev``'s example) is
    active at once; a status it has already (an operator's pause or archive) stands."""
    source = path.read_text(encoding="utf-8")
    campaign = parse_campaign(source, source=str(path))
    version = await queries.campaigns.ensure_campaign_version(
        session, campaign.name, campaign_digest(source), source
    )
    await queries.campaigns.ensure_campaign_state(session, campaign.name, CampaignStatus.ACTIVE)
    return version


_PARSED: dict[str, Campaign] = {}
"""Parsed campaigns by content digest: the one cache. A digest names immutable content, so an
entry is valid in every database and for as long as the process lives."""


def campaign_of(version: CampaignVersion) -> Campaign:
    """The parsed graph of a stored version, parsed once per process."""
    cached = _PARSED.get(version.digest)
    if cached is None:
        cached = parse_campaign(version.source, source=f"{version.name} v{version.version}")
        _PARSED[version.digest] = cached
    return cached


def start_node_of(version: CampaignVersion) -> str:
    return campaign_of(version).start


class CampaignCache:
    """A database's version ids mapped onto the digest cache, so a step needs no query for the
    campaign it runs. Per ``Database``: ids restart in a fresh database, digests do not."""

    def __init__(self) -> None:
        self._by_id: dict[int, Campaign] = {}

    async def get(self, session: AsyncSession, version_id: int) -> Campaign:
        cached = self._by_id.get(version_id)
        if cached is None:
            cached = campaign_of(await queries.campaigns.get_campaign_version(session, version_id))
            self._by_id[version_id] = cached
        return cached
