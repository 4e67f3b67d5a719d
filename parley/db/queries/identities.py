"""Queries of sender identities (accounts, numbers, mailboxes) and who owns a WhatsApp number."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Identity, utcnow
from parley.db.queries._common import get_row, insert_ignoring_conflict
from parley.errors import NotFound


async def ensure_identity(session: AsyncSession, channel: str, address: str) -> Identity:
    await insert_ignoring_conflict(
        session,
        Identity,
        {"channel": channel, "address": address, "created_at": utcnow()},
        ("channel", "address"),
    )
    stmt = select(Identity).where(Identity.channel == channel, Identity.address == address)
    return (await session.execute(stmt)).scalar_one()


WHATSAPP = "whatsapp"


def own_whatsapp_number() -> Any:
    return Identity.settings["phone_number_id"].as_string()


def nested_whatsapp_number() -> Any:
    return Identity.settings[(WHATSAPP, "phone_number_id")].as_string()


async def whatsapp_number_claimers(session: AsyncSession, number: str) -> list[Identity]:
    """The identities whose WhatsApp number is ``number``: a WhatsApp identity by its
    ``phone_number_id`` setting (else its address), any other (a LinkedIn seat, a mailbox) by
    ``whatsapp.phone_number_id``. WhatsApp identities first, then by id; more than one only
    in data older than the check that refuses it."""
    own = own_whatsapp_number()
    is_whatsapp = Identity.channel == WHATSAPP
    stmt = (
        select(Identity)
        .where(
            (is_whatsapp & (own == number))
            | (is_whatsapp & (Identity.address == number) & own.is_(None))
            | ((Identity.channel != WHATSAPP) & (nested_whatsapp_number() == number))
        )
        .order_by(Identity.channel != WHATSAPP, Identity.id)
    )
    return list((await session.scalars(stmt)).all())


async def get_identity(session: AsyncSession, identity_id: int) -> Identity:
    return await get_row(session, Identity, identity_id, "identity")


async def lock_identity(session: AsyncSession, identity_id: int) -> Identity:
    """The identity row under ``FOR UPDATE`` on PostgreSQL: its ``parked`` map is changed by
    the dispatcher (park) and by operators (reconnect), never both at once."""
    params = {"identity_id": identity_id}
    row = (await session.execute(_LOCK_IDENTITY, params)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"identity {identity_id} does not exist")
    return row


_LOCK_IDENTITY = select(Identity).where(Identity.id == bindparam("identity_id")).with_for_update()


async def find_identity(session: AsyncSession, channel: str, address: str) -> Identity | None:
    stmt = select(Identity).where(Identity.channel == channel, Identity.address == address)
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert_identity(session: AsyncSession, values: dict[str, Any]) -> Identity:
    """Insert; a duplicate (channel, address) raises ``IntegrityError`` at the flush."""
    row = Identity(**values)
    session.add(row)
    await session.flush()
    return row


async def all_identities(session: AsyncSession) -> list[Identity]:
    return list((await session.scalars(select(Identity).order_by(Identity.id))).all())
