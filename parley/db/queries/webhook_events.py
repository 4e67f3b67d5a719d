"""The record of webhook deliveries (for deduplication and the operators' counts)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import WebhookEvent


async def record_webhook_event(
    session: AsyncSession, provider: str, kind: str, payload: dict[str, Any]
) -> None:
    session.add(WebhookEvent(provider=provider, kind=kind, payload=payload))


async def count_webhook_events(session: AsyncSession, kind: str | None = None) -> int:
    stmt = select(func.count(WebhookEvent.id))
    if kind:
        stmt = stmt.where(WebhookEvent.kind == kind)
    return int(await session.scalar(stmt) or 0)
