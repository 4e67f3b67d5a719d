"""Queries of the do-not-contact list. Addresses arrive here already normalised
(``parley.suppression``); an installation-wide entry has no identity."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from parley.db.models import Suppression, utcnow
from parley.db.queries._common import insert_row


def _in_scope(identity_id: int | None) -> ColumnElement[bool]:
    if identity_id is None:
        return Suppression.identity_id.is_(None)
    return Suppression.identity_id == identity_id


async def find_suppression(
    session: AsyncSession, identity_id: int | None, kind: str, address: str
) -> Suppression | None:
    """The entry of exactly this scope (installation-wide when ``identity_id`` is None)."""
    stmt = select(Suppression).where(
        _in_scope(identity_id), Suppression.kind == kind, Suppression.address == address
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert_suppression(
    session: AsyncSession,
    *,
    identity_id: int | None,
    kind: str,
    address: str,
    reason: str,
    note: str | None,
    created_by: str | None,
) -> bool:
    """Insert unless the scope already has the address (then the first entry stands: its
    reason and date are the history). True when it was new."""
    stmt = (
        insert_row(session, Suppression)
        .values(
            identity_id=identity_id,
            kind=kind,
            address=address,
            reason=reason,
            note=note,
            created_by=created_by,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing()
        .returning(Suppression.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def delete_suppression(
    session: AsyncSession, identity_id: int | None, kind: str, address: str
) -> int:
    stmt = delete(Suppression).where(
        _in_scope(identity_id), Suppression.kind == kind, Suppression.address == address
    )
    result = await session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


async def list_suppressions(
    session: AsyncSession, identity_id: int | None = None, *, limit: int | None = None
) -> list[Suppression]:
    """Every entry; with an identity, those that apply to it (its own and installation-wide)."""
    stmt = select(Suppression)
    if identity_id is not None:
        stmt = stmt.where(
            or_(Suppression.identity_id.is_(None), Suppression.identity_id == identity_id)
        )
    stmt = stmt.order_by(Suppression.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list((await session.execute(stmt)).scalars())


async def suppressions_covering(
    session: AsyncSession, identity_id: int, keys: Iterable[tuple[str, str]]
) -> list[Suppression]:
    """The entries that cover any of the (kind, address) pairs for this identity, looked up by
    address in chunks (a lead import asks for thousands at once); installation-wide ones first,
    so they win over the identity's own."""
    wanted = set(keys)
    addresses = sorted({address for _, address in wanted})
    found: list[Suppression] = []
    for start in range(0, len(addresses), _CHUNK):
        stmt = select(Suppression).where(
            Suppression.address.in_(addresses[start : start + _CHUNK]),
            or_(Suppression.identity_id.is_(None), Suppression.identity_id == identity_id),
        )
        found.extend((await session.execute(stmt)).scalars())
    covering = [s for s in found if (s.kind, s.address) in wanted]
    return sorted(covering, key=lambda s: (s.identity_id is not None, s.id))


_CHUNK = 500
