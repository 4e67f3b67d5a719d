"""Helpers every query module shares: dialect checks, inserts that ignore a conflict, and a get that
raises NotFound."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Base
from parley.errors import NotFound

_Row = TypeVar("_Row", bound=Base)


def dialect_of(session: AsyncSession) -> str:
    assert session.bind is not None, "sessions are always bound to an engine"
    return session.bind.dialect.name


def insert_row(session: AsyncSession, model: Any) -> Any:
    return (postgresql.insert if dialect_of(session) == "postgresql" else sqlite.insert)(model)


async def insert_ignoring_conflict(
    session: AsyncSession, model: Any, values: dict[str, Any], conflict_on: Sequence[str]
) -> None:
    stmt = (
        insert_row(session, model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=list(conflict_on))
    )
    await session.execute(stmt)


async def get_row(session: AsyncSession, model: type[_Row], key: int, what: str) -> _Row:
    row = await session.get(model, key)
    if row is None:
        raise NotFound(f"{what} {key} does not exist")
    return row


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
