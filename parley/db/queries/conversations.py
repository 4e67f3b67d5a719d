"""Queries that create, find and lock conversation rows, alone or with their contact and
campaign."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import (
    Action,
    CampaignVersion,
    Contact,
    Conversation,
    Identity,
    Message,
)
from parley.db.queries._common import get_row
from parley.db.queries.identities import WHATSAPP, nested_whatsapp_number
from parley.errors import NotFound
from parley.vocabulary import ACTIVE, Direction, Status


async def lock_conversation(session: AsyncSession, conversation_id: int) -> Conversation:
    stmt = (
        select(Conversation)
        .where(Conversation.id == conversation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"conversation {conversation_id} does not exist")
    return row


async def get_conversation(session: AsyncSession, conversation_id: int) -> Conversation:
    return await get_row(session, Conversation, conversation_id, "conversation")


async def lock_active_conversation(
    session: AsyncSession, identity_id: int, contact_id: int
) -> Conversation | None:
    stmt = (
        select(Conversation)
        .where(
            Conversation.identity_id == identity_id,
            Conversation.contact_id == contact_id,
            Conversation.status.in_(ACTIVE),
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def create_conversation(
    session: AsyncSession,
    identity_id: int,
    contact_id: int,
    campaign: CampaignVersion,
    start_node: str,
) -> tuple[Conversation, bool]:
    """Signal-with-start, second half: the caller found no active conversation of the pair
    under lock; create one (created=True), or take the one a concurrent webhook just made."""
    row = Conversation(
        identity_id=identity_id,
        contact_id=contact_id,
        campaign_version_id=campaign.id,
        status=Status.PENDING,
        current_node=start_node,
        variables={},
    )
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        # A concurrent webhook created it first (PostgreSQL); take theirs.
        found = await lock_active_conversation(session, identity_id, contact_id)
        if found is None:
            raise
        return found, False
    return row, True


def _with_contact_and_campaign() -> Any:
    return (
        select(Conversation, Contact, CampaignVersion)
        .join(Contact, Contact.id == Conversation.contact_id)
        .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
    )


async def conversation_with_context(
    session: AsyncSession, conversation_id: int
) -> tuple[Conversation, Contact, CampaignVersion]:
    """A conversation, the contact it talks to and the campaign version it runs, in one query."""
    stmt = _with_contact_and_campaign().where(Conversation.id == conversation_id)
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        raise NotFound(f"conversation {conversation_id} does not exist")
    conv, contact, campaign = row
    return conv, contact, campaign


async def list_conversations(
    session: AsyncSession, *, limit: int = 100, status: Status | None = None
) -> list[tuple[Conversation, Contact, CampaignVersion]]:
    stmt = _with_contact_and_campaign().order_by(Conversation.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(Conversation.status == status)
    return [(c, ct, cv) for c, ct, cv in (await session.execute(stmt)).all()]


async def conversation_ids_of_campaign(
    session: AsyncSession, name: str, statuses: Sequence[Status]
) -> list[int]:
    stmt = (
        select(Conversation.id)
        .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
        .where(CampaignVersion.name == name, Conversation.status.in_(list(statuses)))
        .order_by(Conversation.id)
    )
    return list((await session.execute(stmt)).scalars())


async def lock_conversation_if_free(
    session: AsyncSession, conversation_id: int
) -> Conversation | None:
    """The row, locked, or None when another transaction holds it right now."""
    stmt = (
        select(Conversation)
        .where(Conversation.id == conversation_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def active_by_flow_run(
    session: AsyncSession, flow_run_ids: Sequence[str]
) -> list[Conversation]:
    if not flow_run_ids:
        return []
    stmt = select(Conversation).where(
        Conversation.flow_run_id.in_(list(flow_run_ids)), Conversation.status.in_(ACTIVE)
    )
    return list((await session.execute(stmt)).scalars())


async def lock_active_conversation_that_sent(
    session: AsyncSession, provider_id: str
) -> Conversation | None:
    """The active conversation whose action (or message) the provider knows as ``provider_id``
    (an email's Message-ID), locked; None when it ended or was never ours."""
    by_action = select(Action.conversation_id).where(Action.provider_id == provider_id)
    by_message = select(Message.conversation_id).where(
        Message.provider_message_id == provider_id, Message.direction == Direction.OUT
    )
    stmt = (
        select(Conversation)
        .where(
            Conversation.id.in_(by_action.union(by_message)),
            Conversation.status.in_(ACTIVE),
        )
        .limit(1)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def lock_active_conversation_of_lead(
    session: AsyncSession,
    field: str,
    values: Sequence[str],
    *,
    identity_id: int | None = None,
    without_own_whatsapp_number: bool = False,
) -> Conversation | None:
    """The newest active conversation whose contact's ``fields[field]`` is one of ``values``
    (a LinkedIn lead's WhatsApp number), of identity ``identity_id``, or of every identity
    other than a WhatsApp one that has no WhatsApp number of its own (they send from the
    installation's); locked like ``lock_active_conversation``."""
    stmt = (
        select(Conversation)
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(Conversation.status.in_(ACTIVE), Contact.fields[field].as_string().in_(values))
        .order_by(Conversation.id.desc())
        .limit(1)
        .with_for_update(of=Conversation)
        .execution_options(populate_existing=True)
    )
    if identity_id is not None:
        stmt = stmt.where(Conversation.identity_id == identity_id)
    if without_own_whatsapp_number:
        stmt = stmt.join(Identity, Identity.id == Conversation.identity_id).where(
            Identity.channel != WHATSAPP, nested_whatsapp_number().is_(None)
        )
    return (await session.execute(stmt)).scalar_one_or_none()


async def lock_conversations_of_campaign(
    session: AsyncSession, name: str, statuses: Sequence[Status]
) -> list[Conversation]:
    """Every conversation of the campaign (any version) in ``statuses``, locked for update and
    in id order (the order every locker of several rows takes, so two never deadlock)."""
    stmt = (
        select(Conversation)
        .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
        .where(CampaignVersion.name == name, Conversation.status.in_(list(statuses)))
        .order_by(Conversation.id)
        .with_for_update(of=Conversation)
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(stmt)).scalars())


async def active_ids_off_version(
    session: AsyncSession, name: str, campaign_version_id: int
) -> list[int]:
    """Active conversations of the campaign that run on another version than this one."""
    stmt = (
        select(Conversation.id)
        .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
        .where(
            CampaignVersion.name == name,
            Conversation.campaign_version_id != campaign_version_id,
            Conversation.status.in_(list(ACTIVE)),
        )
        .order_by(Conversation.id)
    )
    return list((await session.execute(stmt)).scalars())


async def active_with_identity(
    session: AsyncSession, identity_id: int, contact_ids: Sequence[int]
) -> dict[int, int]:
    """Contacts among ``contact_ids`` with an active conversation with the identity: contact id
    -> conversation id (a batch's ``lock_active_conversation``; the unique index on the pair
    refuses a racing creation at flush)."""
    if not contact_ids:
        return {}
    stmt = select(Conversation.contact_id, Conversation.id).where(
        Conversation.identity_id == identity_id,
        Conversation.contact_id.in_(list(contact_ids)),
        Conversation.status.in_(ACTIVE),
    )
    return {contact_id: cid for contact_id, cid in (await session.execute(stmt)).all()}


def new_imported_conversation(
    session: AsyncSession,
    identity_id: int,
    contact_id: int,
    campaign: CampaignVersion,
    start_node: str,
    import_id: int,
) -> Conversation:
    """A pending conversation of a lead import, added to the session (flushed by the caller
    with its batch): the dispatcher starts its run, paced."""
    row = Conversation(
        identity_id=identity_id,
        contact_id=contact_id,
        campaign_version_id=campaign.id,
        status=Status.PENDING,
        current_node=start_node,
        variables={},
        import_id=import_id,
    )
    session.add(row)
    return row
