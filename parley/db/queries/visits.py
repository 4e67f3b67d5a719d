"""Node visits: a conversation's step history and the campaign funnel read from it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Conversation, NodeVisit
from parley.vocabulary import ACTIVE, Status


async def open_visit(
    session: AsyncSession, row: Conversation, node: str, entered_at: datetime
) -> None:
    session.add(
        NodeVisit(
            conversation_id=row.id,
            campaign_version_id=row.campaign_version_id,
            node=node,
            entered_at=entered_at,
        )
    )


async def current_visit(session: AsyncSession, conversation_id: int) -> NodeVisit | None:
    stmt = (
        select(NodeVisit)
        .where(NodeVisit.conversation_id == conversation_id, NodeVisit.left_at.is_(None))
        .order_by(NodeVisit.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def close_visit(
    session: AsyncSession,
    conversation_id: int,
    *,
    at: datetime,
    outcome: str,
    next_node: str | None = None,
    attempts: int = 0,
    error: str | None = None,
) -> None:
    visit = await current_visit(session, conversation_id)
    if visit is None:
        return
    visit.left_at, visit.outcome, visit.next_node = at, outcome, next_node
    visit.attempts = max(visit.attempts, attempts)
    if error is not None:
        visit.error = error[:2000]


async def visits_of(session: AsyncSession, conversation_id: int) -> list[NodeVisit]:
    stmt = select(NodeVisit).where(NodeVisit.conversation_id == conversation_id)
    return list((await session.execute(stmt.order_by(NodeVisit.id))).scalars())


_DROPPED_OUTCOMES = (Status.FAILED.value, Status.CANCELLED.value)


_NORMAL_OUTCOMES = ("left", Status.COMPLETED.value)


async def funnel_visit_counts(
    session: AsyncSession, campaign_version_id: int
) -> dict[str, tuple[int, int, int]]:
    """Per node of the version: conversations that reached it, conversations that ended there
    failed or cancelled, and visits that ended normally (by an edge, or completing there)."""
    conversations = func.count(func.distinct(NodeVisit.conversation_id))
    stmt = (
        select(
            NodeVisit.node,
            conversations,
            conversations.filter(NodeVisit.outcome.in_(_DROPPED_OUTCOMES)),
            func.count(NodeVisit.id).filter(NodeVisit.outcome.in_(_NORMAL_OUTCOMES)),
        )
        .where(NodeVisit.campaign_version_id == campaign_version_id)
        .group_by(NodeVisit.node)
    )
    rows = (await session.execute(stmt)).all()
    return {node: (int(reached), int(lost), int(done)) for node, reached, lost, done in rows}


async def funnel_waiting(session: AsyncSession, campaign_version_id: int) -> dict[str, int]:
    """Active conversations of the version, per node they are at now."""
    stmt = (
        select(Conversation.current_node, func.count(Conversation.id))
        .where(
            Conversation.campaign_version_id == campaign_version_id,
            Conversation.status.in_(list(ACTIVE)),
        )
        .group_by(Conversation.current_node)
    )
    return {node: int(count) for node, count in (await session.execute(stmt)).all()}


async def funnel_stays(
    session: AsyncSession, campaign_version_id: int
) -> list[tuple[str, datetime, datetime]]:
    """(node, entered_at, left_at) of every closed visit of the version: two timestamps per
    visit, so percentiles are computed the same way on SQLite (no percentile_cont) and
    PostgreSQL."""
    stmt = select(NodeVisit.node, NodeVisit.entered_at, NodeVisit.left_at).where(
        NodeVisit.campaign_version_id == campaign_version_id, NodeVisit.left_at.is_not(None)
    )
    rows = (await session.execute(stmt)).all()
    return [(node, entered, left) for node, entered, left in rows if left is not None]


async def visits_tail(
    session: AsyncSession, conversation_id: int, limit: int
) -> tuple[list[NodeVisit], int]:
    """The last ``limit`` node visits in order, and how many the conversation has in all."""
    total = await session.scalar(
        select(func.count(NodeVisit.id)).where(NodeVisit.conversation_id == conversation_id)
    )
    stmt = (
        select(NodeVisit)
        .where(NodeVisit.conversation_id == conversation_id)
        .order_by(NodeVisit.id.desc())
        .limit(limit)
    )
    newest_first = list((await session.execute(stmt)).scalars())
    return newest_first[::-1], int(total or 0)
