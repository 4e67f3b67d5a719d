"""Queries about a lead across conversations: whether anyone of the installation has been in
touch with them lately (the ``not_already_contacted`` condition).

A lead is one person with addresses on several channels: a LinkedIn contact whose ``email``
field is ana@example.com is the same lead as the email contact ana@example.com. Contacts are
matched both ways: by the (channel, address) pairs this contact knows of (its own and its
``email``/``linkedin``/``whatsapp``/``phone`` fields), and by other contacts whose own fields
name one of those addresses.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Action, Contact, Conversation, Message
from parley.vocabulary import ACTION_SENT, SENT_STATUSES, Direction

ADDRESS_FIELDS = {
    "email": "email",
    "linkedin": "linkedin",
    "whatsapp": "whatsapp",
    "phone": "whatsapp",
}
"""Contact fields that hold an address on another channel: field name -> channel."""


def lead_addresses(contact: Contact) -> set[tuple[str, str]]:
    """Every (channel, address) the contact is known by: emails lowercased, as the email
    channel stores them; phones also as digits only, as WhatsApp ids are stored."""
    pairs = {(contact.channel, contact.address)}
    for name, channel in ADDRESS_FIELDS.items():
        value = contact.fields.get(name)
        if isinstance(value, str) and value.strip():
            pairs.add((channel, value.strip()))
    known: set[tuple[str, str]] = set()
    for channel, address in pairs:
        if channel == "email":
            address = address.lower()
        known.add((channel, address))
        if channel == "whatsapp" and _digits(address):
            known.add((channel, _digits(address)))
    return known


def _digits(phone: str) -> str:
    return "".join(character for character in phone if character.isdigit())


async def lead_contact_ids(session: AsyncSession, contact: Contact) -> set[int]:
    """The contacts that are the same lead as ``contact`` (itself included)."""
    pairs = lead_addresses(contact)
    by_address = [and_(Contact.channel == ch, Contact.address == addr) for ch, addr in pairs]
    by_field = [
        Contact.fields[name].as_string() == addr
        for name, channel in ADDRESS_FIELDS.items()
        for ch, addr in pairs
        if ch == channel
    ]
    rows = await session.execute(select(Contact.id).where(or_(*by_address, *by_field)))
    return {contact.id, *rows.scalars()}


async def last_contacted_at(
    session: AsyncSession, contact_ids: Iterable[int], excluding_conversation: int
) -> datetime | None:
    """When another conversation with one of these contacts, by any identity, last exchanged
    a message (stored in or sent out) or performed an outreach action; ``None`` if never."""
    others = select(Conversation.id).where(
        Conversation.contact_id.in_(list(contact_ids)),
        Conversation.id != excluding_conversation,
    )
    sent = [status.value for status in SENT_STATUSES]
    message = select(func.max(Message.created_at)).where(
        Message.conversation_id.in_(others),
        or_(Message.direction == Direction.IN.value, Message.status.in_(sent)),
    )
    action = select(func.max(Action.performed_at)).where(
        Action.conversation_id.in_(others), Action.outcome == ACTION_SENT
    )
    instants = [
        await session.scalar(message),
        await session.scalar(action),
    ]
    return max((at for at in instants if at is not None), default=None)
