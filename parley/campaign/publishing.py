"""Campaigns as a published, versioned resource: what an operator puts into Parley and reads
back. Publishing is idempotent by content: the same graph (comments, key order and formatting
aside) is the same version, so a deploy script may publish every file on every run.

A conversation keeps the version it started on; publishing never moves a running conversation
(``parley campaign migrate`` does that).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign.loading import campaign_digest, parse_campaign
from parley.campaign.registry import campaign_of
from parley.db import Database, queries
from parley.db.models import CampaignVersion

_PUBLISH_ATTEMPTS = 3
"""Two operators publishing new content of one campaign at once both pick the next version
number; the unique (name, version) makes one of them try again with the number after it."""


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    digest: str
    created: bool  # False: this content was published before, as ``version``

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "created": self.created,
        }


@dataclass(frozen=True)
class CampaignSummary:
    name: str
    latest_version: int
    versions: int
    published_at: datetime
    paused: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "latest_version": self.latest_version,
            "versions": self.versions,
            "published_at": self.published_at.isoformat(),
            "paused": self.paused,
        }


async def publish(db: Database, source: str, *, origin: str = "<published>") -> Published:
    """Validate ``source`` (``CampaignInvalid`` lists every problem by node id) and store it as
    the campaign's next version unless this content is stored already."""
    campaign = parse_campaign(source, source=origin)
    digest = campaign_digest(source)
    attempt = 1
    while True:
        try:
            async with db.transaction() as session:
                known = await queries.campaigns.campaign_version_with_digest(
                    session, campaign.name, digest
                )
                row = known or await queries.campaigns.add_campaign_version(
                    session, campaign.name, digest, source
                )
                return Published(row.name, row.version, row.digest, created=known is None)
        except IntegrityError:
            if attempt == _PUBLISH_ATTEMPTS:
                raise
            attempt += 1


async def list_campaigns(db: Database) -> list[CampaignSummary]:
    async with db.read() as session:
        rows = await queries.campaigns.campaign_summaries(session)
        held = await queries.campaigns.held_campaigns(session)
    return [
        CampaignSummary(name, latest, count, at, paused=name in held)
        for name, latest, count, at in rows
    ]


async def show_campaign(db: Database, name: str, version: int | None = None) -> dict[str, Any]:
    """One version (default: the newest) with the graph's outline and every version's number;
    ``NotFound`` names what is unknown."""
    async with db.read() as session:
        row = await _version(session, name, version)
        versions = await queries.campaigns.campaign_versions_named(session, name)
        held = await queries.campaigns.held_campaigns(session)
    campaign = campaign_of(row)
    return {
        "name": row.name,
        "version": row.version,
        "digest": row.digest,
        "published_at": row.created_at.isoformat(),
        "paused": name in held,
        "channel": campaign.channel,
        "start": campaign.start,
        "nodes": [{"id": node.id, "type": node.type} for node in campaign.nodes],
        "edges": len(campaign.edges),
        "versions": [
            {"version": v.version, "digest": v.digest, "published_at": v.created_at.isoformat()}
            for v in versions
        ],
    }


async def campaign_source(db: Database, name: str, version: int | None = None) -> str:
    """The exact text that was published as that version."""
    async with db.read() as session:
        return (await _version(session, name, version)).source


async def _version(session: AsyncSession, name: str, version: int | None) -> CampaignVersion:
    if version is None:
        return await queries.campaigns.latest_campaign_version(session, name)
    return await queries.campaigns.campaign_version_numbered(session, name, version)
