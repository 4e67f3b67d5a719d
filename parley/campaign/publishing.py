"""Campaigns as a published, versioned resource: what an operator puts into Parley and reads
back. Publishing is idempotent by content: the same graph (comments, key order and formatting
aside) is the same version, so a deploy script may publish every file on every run.

A conversation keeps the version it started on; publishing never moves a running conversation
(``parley campaign migrate`` does that). New conversations get the newest version.

A campaign name published for the first time is a ``draft``: nothing of it goes out until it
is activated (``parley.campaign.status``). Publishing also checks what the campaign needs from
this installation (``parley.campaign.installation``): its problems refuse the publish like the
graph's own; a secret store that cannot be asked is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign.installation import Installation, check_installation
from parley.campaign.loading import campaign_digest, parse_campaign
from parley.campaign.registry import campaign_of
from parley.campaign.status import status_of
from parley.db import Database, queries
from parley.db.models import CampaignState, CampaignVersion
from parley.errors import CampaignInvalid
from parley.vocabulary import CampaignStatus

_PUBLISH_ATTEMPTS = 3
"""Two operators publishing new content of one campaign at once both pick the next version
number; the unique (name, version) makes one of them try again with the number after it."""


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    digest: str
    created: bool  # False: this content was published before, as ``version``
    status: CampaignStatus
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "digest": self.digest,
            "created": self.created,
            "status": self.status.value,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class CampaignSummary:
    name: str
    latest_version: int
    versions: int
    published_at: datetime
    status: CampaignStatus

    @property
    def paused(self) -> bool:
        return self.status is CampaignStatus.PAUSED

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "latest_version": self.latest_version,
            "versions": self.versions,
            "published_at": self.published_at.isoformat(),
            "status": self.status.value,
            "paused": self.paused,
        }


async def publish(
    db: Database,
    source: str,
    *,
    origin: str = "<published>",
    installation: Installation | None = None,
) -> Published:
    """Validate ``source`` (``CampaignInvalid`` lists every problem by node id), against this
    ``installation`` too when given, and store it as the campaign's next version unless this
    content is stored already. A new campaign name starts as a draft."""
    campaign = parse_campaign(source, source=origin)
    warnings: list[str] = []
    if installation is not None:
        async with db.read() as session:
            check = await check_installation(session, campaign, installation)
        if check.problems:
            raise CampaignInvalid(check.problems)
        warnings = check.warnings
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
                await queries.campaigns.ensure_campaign_state(
                    session, campaign.name, CampaignStatus.DRAFT
                )
                state = await queries.campaigns.campaign_state(session, campaign.name)
                return Published(
                    row.name,
                    row.version,
                    row.digest,
                    created=known is None,
                    status=status_of(state),
                    warnings=warnings,
                )
        except IntegrityError:
            if attempt == _PUBLISH_ATTEMPTS:
                raise
            attempt += 1


async def list_campaigns(db: Database) -> list[CampaignSummary]:
    async with db.read() as session:
        rows = await queries.campaigns.campaign_summaries(session)
        states = await queries.campaigns.campaign_states(session)
    return [
        CampaignSummary(name, latest, count, at, status_of(states.get(name)))
        for name, latest, count, at in rows
    ]


async def show_campaign(db: Database, name: str, version: int | None = None) -> dict[str, Any]:
    """One version (default: the newest) with the graph's outline and every version's number;
    ``NotFound`` names what is unknown."""
    async with db.read() as session:
        row = await _version(session, name, version)
        versions = await queries.campaigns.campaign_versions_named(session, name)
        state: CampaignState | None = await queries.campaigns.campaign_state(session, name)
    campaign = campaign_of(row)
    status = status_of(state)
    return {
        "name": row.name,
        "version": row.version,
        "digest": row.digest,
        "published_at": row.created_at.isoformat(),
        "status": status.value,
        "status_reason": state.reason if state is not None else None,
        "paused": status is CampaignStatus.PAUSED,
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
