"""Queries of lead imports: the import, its rows (stored before anything is created), the
rows still open, what earlier imports started, and the import's progress."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Conversation, LeadImport, LeadImportRow
from parley.db.queries._common import get_row

STARTED = "started"


async def unfinished_import(
    session: AsyncSession, digest: str, campaign: str, identity_id: int
) -> LeadImport | None:
    """The import of the same content that was interrupted before its last batch, if any."""
    stmt = (
        select(LeadImport)
        .where(
            LeadImport.digest == digest,
            LeadImport.campaign == campaign,
            LeadImport.identity_id == identity_id,
            LeadImport.status == "importing",
        )
        .order_by(LeadImport.id)
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def add_import(
    session: AsyncSession,
    *,
    campaign: str,
    identity_id: int,
    source: str,
    digest: str,
    rows: Sequence[dict[str, Any]],
) -> LeadImport:
    """The import and all its rows, in the caller's transaction; ``rows`` are
    ``{row_number, lead_key, lead, outcome, detail}`` (outcome None: still to do)."""
    record = LeadImport(
        campaign=campaign,
        identity_id=identity_id,
        source=source[:255],
        digest=digest,
        status="importing",
        total=len(rows),
    )
    session.add(record)
    await session.flush()
    if rows:
        await session.execute(
            insert(LeadImportRow), [{**row, "import_id": record.id} for row in rows]
        )
    return record


async def get_import(session: AsyncSession, import_id: int) -> LeadImport:
    return await get_row(session, LeadImport, import_id, "import")


async def claim_open_rows(session: AsyncSession, import_id: int, limit: int) -> list[LeadImportRow]:
    """The next rows without an outcome, locked (skipping rows another importer holds: two
    importers of the same content split the work)."""
    stmt = (
        select(LeadImportRow)
        .where(LeadImportRow.import_id == import_id, LeadImportRow.outcome.is_(None))
        .order_by(LeadImportRow.row_number)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(stmt)).scalars())


async def started_before(
    session: AsyncSession, campaign: str, identity_id: int, keys: Iterable[str]
) -> dict[str, int]:
    """Leads an earlier import already started in this campaign for this identity:
    lead key -> that import's id."""
    wanted = list(set(keys))
    if not wanted:
        return {}
    stmt = (
        select(LeadImportRow.lead_key, func.min(LeadImport.id))
        .join(LeadImport, LeadImport.id == LeadImportRow.import_id)
        .where(
            LeadImportRow.lead_key.in_(wanted),
            LeadImportRow.outcome == STARTED,
            LeadImport.campaign == campaign,
            LeadImport.identity_id == identity_id,
        )
        .group_by(LeadImportRow.lead_key)
    )
    return {key: import_id for key, import_id in (await session.execute(stmt)).all() if key}


async def finish_import(session: AsyncSession, import_id: int, now: datetime) -> None:
    await session.execute(
        update(LeadImport)
        .where(LeadImport.id == import_id, LeadImport.status == "importing")
        .values(status="done", finished_at=now)
    )


async def outcome_counts(session: AsyncSession, import_id: int) -> dict[str, int]:
    """Rows per outcome (``pending``: not done yet)."""
    stmt = (
        select(LeadImportRow.outcome, func.count())
        .where(LeadImportRow.import_id == import_id)
        .group_by(LeadImportRow.outcome)
    )
    return {outcome or "pending": n for outcome, n in (await session.execute(stmt)).all()}


async def runs_started(session: AsyncSession, import_id: int) -> int:
    """Conversations of the import whose flow run the dispatcher has created."""
    stmt = select(func.count()).where(
        Conversation.import_id == import_id, Conversation.flow_run_id.is_not(None)
    )
    return int(await session.scalar(stmt) or 0)


async def report_rows(session: AsyncSession, import_id: int) -> list[LeadImportRow]:
    stmt = (
        select(LeadImportRow)
        .where(LeadImportRow.import_id == import_id)
        .order_by(LeadImportRow.row_number)
    )
    return list((await session.execute(stmt)).scalars())


async def list_imports(session: AsyncSession, limit: int) -> list[LeadImport]:
    stmt = select(LeadImport).order_by(LeadImport.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())
