"""Queries of contacts, the people a conversation talks to."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Contact, utcnow
from parley.db.queries._common import get_row, insert_ignoring_conflict, insert_row


async def ensure_contact(
    session: AsyncSession, channel: str, address: str, name: str | None
) -> Contact:
    await insert_ignoring_conflict(
        session,
        Contact,
        {"channel": channel, "address": address, "name": name, "created_at": utcnow()},
        ("channel", "address"),
    )
    stmt = select(Contact).where(Contact.channel == channel, Contact.address == address)
    contact = (await session.execute(stmt)).scalar_one()
    if name and contact.name != name:
        contact.name = name
    return contact


async def get_contact(session: AsyncSession, contact_id: int) -> Contact:
    return await get_row(session, Contact, contact_id, "contact")


async def merge_fields(session: AsyncSession, contact_id: int, values: dict[str, Any]) -> Contact:
    """Set some of the contact's fields, keeping the others (a new dict: JSON columns are
    written when replaced, not when changed in place)."""
    contact = await get_contact(session, contact_id)
    contact.fields = {**contact.fields, **values}
    return contact


async def ensure_contacts(
    session: AsyncSession, leads: list[tuple[str, str, str | None]]
) -> dict[tuple[str, str], Contact]:
    """``ensure_contact`` for a batch of ``(channel, address, name)``: one insert, one select."""
    if not leads:
        return {}
    now = utcnow()
    stmt = (
        insert_row(session, Contact)
        .values(
            [
                {"channel": channel, "address": address, "name": name, "created_at": now}
                for channel, address, name in leads
            ]
        )
        .on_conflict_do_nothing(index_elements=["channel", "address"])
    )
    await session.execute(stmt)
    found = select(Contact).where(
        Contact.address.in_({address for _, address, _ in leads}),
        Contact.channel.in_({channel for channel, _, _ in leads}),
    )
    contacts = {(c.channel, c.address): c for c in (await session.execute(found)).scalars()}
    for channel, address, name in leads:
        contact = contacts[(channel, address)]
        if name and contact.name != name:
            contact.name = name
    return contacts
