"""Queries of campaign versions and of campaigns' statuses (one row per campaign name)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import CampaignState, CampaignVersion, utcnow
from parley.db.queries._common import get_row, insert_ignoring_conflict
from parley.errors import NotFound
from parley.vocabulary import HELD_BY_CAMPAIGN, CampaignStatus


async def ensure_campaign_version(
    session: AsyncSession, name: str, digest: str, source: str
) -> CampaignVersion:
    """Store a campaign's source once per distinct content; a new digest is a new version."""
    found = await campaign_version_with_digest(session, name, digest)
    return found or await add_campaign_version(session, name, digest, source)


async def add_campaign_version(
    session: AsyncSession, name: str, digest: str, source: str
) -> CampaignVersion:
    """The campaign's next version; two racing adds of one name: the unique (name, version)
    refuses the second (IntegrityError)."""
    latest = await session.scalar(
        select(func.max(CampaignVersion.version)).where(CampaignVersion.name == name)
    )
    row = CampaignVersion(name=name, version=(latest or 0) + 1, digest=digest, source=source)
    session.add(row)
    await session.flush()
    return row


async def latest_campaign_version(session: AsyncSession, name: str) -> CampaignVersion:
    stmt = (
        select(CampaignVersion)
        .where(CampaignVersion.name == name)
        .order_by(CampaignVersion.version.desc())
        .limit(1)
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"campaign {name!r} is not loaded")
    return row


async def get_campaign_version(session: AsyncSession, version_id: int) -> CampaignVersion:
    return await get_row(session, CampaignVersion, version_id, "campaign version")


async def campaign_held(session: AsyncSession, campaign_version_id: int) -> bool:
    """Whether the campaign this version belongs to holds its conversations (a draft or a
    paused campaign: the runner's and the dispatcher's pause gate)."""
    stmt = select(
        exists().where(
            CampaignState.name == CampaignVersion.name,
            CampaignVersion.id == campaign_version_id,
            CampaignState.status.in_([s.value for s in HELD_BY_CAMPAIGN]),
        )
    )
    return bool(await session.scalar(stmt))


async def ensure_campaign_state(session: AsyncSession, name: str, status: CampaignStatus) -> None:
    """A campaign's first status; one it has already (an operator's pause, say) stands."""
    await insert_ignoring_conflict(
        session,
        CampaignState,
        {"name": name, "status": status.value, "changed_at": utcnow()},
        ("name",),
    )


async def lock_campaign_state(session: AsyncSession, name: str) -> CampaignState | None:
    """The campaign's status row, locked (PostgreSQL) so two operators' changes queue."""
    stmt = select(CampaignState).where(CampaignState.name == name).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def campaign_state(session: AsyncSession, name: str) -> CampaignState | None:
    return await session.get(CampaignState, name)


async def set_campaign_status(
    session: AsyncSession, name: str, status: CampaignStatus, reason: str | None
) -> None:
    state = await lock_campaign_state(session, name)
    if state is None:
        session.add(CampaignState(name=name, status=status.value, reason=reason))
    else:
        state.status, state.reason, state.changed_at = status.value, reason, utcnow()
    await session.flush()


async def campaign_versions_named(session: AsyncSession, name: str) -> list[CampaignVersion]:
    stmt = select(CampaignVersion).where(CampaignVersion.name == name)
    return list((await session.execute(stmt.order_by(CampaignVersion.version))).scalars())


async def campaign_version_numbered(
    session: AsyncSession, name: str, version: int
) -> CampaignVersion:
    """The version row ``version`` of campaign ``name``; NotFound names which part is unknown."""
    stmt = select(CampaignVersion).where(
        CampaignVersion.name == name, CampaignVersion.version == version
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is not None:
        return row
    known = [v.version for v in await campaign_versions_named(session, name)]
    if not known:
        raise NotFound(f"campaign {name!r} does not exist")
    listed = ", ".join(str(v) for v in known)
    raise NotFound(f"campaign {name!r} has no version {version} (it has {listed})")


async def campaign_version_with_digest(
    session: AsyncSession, name: str, digest: str
) -> CampaignVersion | None:
    stmt = select(CampaignVersion).where(
        CampaignVersion.name == name, CampaignVersion.digest == digest
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def campaign_summaries(session: AsyncSession) -> list[tuple[str, int, int, datetime]]:
    """Per campaign name: its newest version number, how many versions it has, and when the
    newest was published; by name."""
    stmt = (
        select(
            CampaignVersion.name,
            func.max(CampaignVersion.version),
            func.count(CampaignVersion.id),
            func.max(CampaignVersion.created_at),
        )
        .group_by(CampaignVersion.name)
        .order_by(CampaignVersion.name)
    )
    return [(n, int(v), int(c), at) for n, v, c, at in (await session.execute(stmt)).all()]


async def campaign_states(session: AsyncSession) -> dict[str, CampaignState]:
    """Every campaign's status row, by name."""
    return {row.name: row for row in (await session.execute(select(CampaignState))).scalars()}
