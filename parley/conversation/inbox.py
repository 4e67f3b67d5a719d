"""Storing inbound provider events once, in channel-neutral form.

Each message is stored in one transaction together with its contact and, if none is active, a
new conversation ("signal-with-start"). Under the same conversation row lock the flow takes
before it goes to sleep, ``handshake.wakeup_for`` decides the wake-up (resume a suspended run,
start a new one, or nothing for a run that will see the message by itself). The wake-up happens
after commit, so a Prefect outage never loses a message.

Outreach channels (LinkedIn, email) pass no campaign: a lead writes back to a conversation we
started, and a message from anyone without an active conversation must not open one on the
default (onboarding) campaign. It is recorded as an ``unmatched_message`` webhook event instead.

WhatsApp messages are routed by the number they arrived on (``metadata.phone_number_id``): to
the identity that owns it (``whatsapp_numbers.whatsapp_number``: a WhatsApp identity, or a LinkedIn
seat's ``whatsapp.phone_number_id``), because an outreach template went out from that number
and the lead answers there. The lead's active conversation with that identity gets the message
(for a seat: the conversation whose contact's ``whatsapp`` field is the sender); on the
installation's own number (``own_number``) also a conversation of a seat that has no WhatsApp
number of its own, since its templates went out from there. Only a message that matches none
starts a conversation on the default campaign, and only on the installation's own number or
on the number of an identity with ``start_conversations: true``; elsewhere it is recorded as
``unmatched_message``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign import status as campaign_status
from parley.campaign.registry import start_node_of
from parley.channels.base import InboundBatch, InboundMessage, InboundRole, JSONDict, StatusUpdate
from parley.conversation import opt_out, whatsapp_numbers
from parley.conversation.handshake import WakeUp, wakeup_for
from parley.db import Database, queries
from parley.db.models import CampaignVersion, Contact, Conversation, Identity, utcnow
from parley.errors import NotFound
from parley.vocabulary import TRIGGER_STEP

SettleAction = Callable[[AsyncSession, StatusUpdate, datetime, list[WakeUp]], Awaitable[bool]]
"""Settles an outreach action by a provider's status callback (its key came back as
``client_ref``) in the caller's transaction, adding the suspended run its outcome is owed to
to the list; False when no action has that key. The outreach wing's
``parley.outreach.dispatch.reconcile_status``: the webhook passes it in."""

NOT_STARTED = "no active conversation with this contact; none is started on this channel"
WHATSAPP = "whatsapp"


class _Duplicate(Exception):
    """A re-delivered message raced us after we created its conversation: undo both."""


class NoActiveConversation(Exception):
    """No campaign to start one with, and the contact has no active conversation; raising it
    rolls back the identity and contact rows the lookup would otherwise leave behind."""

    def __init__(self, provider_message_id: str, reason: str = NOT_STARTED) -> None:
        super().__init__(provider_message_id)
        self.reason = reason


@dataclass
class StoreResult:
    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    ignored: int = 0
    unmatched: int = 0  # messages with no active conversation to go to (no campaign given)
    wakeups: list[WakeUp] = field(default_factory=list)
    # Suspended runs an outreach action's outcome is owed to (a status callback settled an
    # uncertain action they wait for): resumed like ``wakeups``, for the outcome's sake.
    outcome_wakeups: list[WakeUp] = field(default_factory=list)
    # Every conversation that got a new message: on SQLite the webhook tells the workers, so a
    # live run waiting hot wakes at once instead of at its next poll.
    received: list[int] = field(default_factory=list)
    # Conversations a stop keyword ended whose confirmation is recorded: the webhook delivers
    # it after the commit (``opt_out.send_confirmation``).
    confirmations: list[int] = field(default_factory=list)


async def store_batch(
    db: Database,
    batch: InboundBatch,
    campaign_name: str | None,
    *,
    own_number: str | None = None,
    settle_action: SettleAction | None = None,
) -> StoreResult:
    """``campaign_name=None``: messages only reach active conversations (see the module doc).
    ``own_number``: the installation's WhatsApp number (``PARLEY_WHATSAPP_PHONE_NUMBER_ID``);
    None leaves every WhatsApp number free to start conversations. ``settle_action``: what a
    status callback that matches none of our messages is tried on next (an outreach action's);
    without it, or when it finds nothing, the status is recorded as ``unmatched_status``."""
    result = StoreResult()
    for message in batch.messages:
        if message.role is InboundRole.UNSUPPORTED:
            await record_event(db, message.channel, "unsupported_message", message.raw)
            result.ignored += 1
            continue
        try:
            wakeup, inserted, conversation_id = await store_message(
                db, message, campaign_name, own_number=own_number, stopped=result.confirmations
            )
        except NoActiveConversation as exc:
            unmatched = _unmatched(message, exc.reason)
            await record_event(db, message.channel, "unmatched_message", unmatched)
            result.unmatched += 1
            continue
        result.stored += int(inserted)
        result.duplicates += int(not inserted)
        if inserted and conversation_id is not None and conversation_id not in result.received:
            result.received.append(conversation_id)
        if wakeup is not None and wakeup not in result.wakeups:
            result.wakeups.append(wakeup)
    for status in batch.statuses:
        result.statuses += int(
            await apply_status(db, status, settle_action, result.outcome_wakeups)
        )
    for item in batch.ignored:
        channel = str(item.get("channel", "unknown"))
        await record_event(db, channel, str(item.get("kind", "ignored")), item)
        result.ignored += 1
    return result


async def store_message(
    db: Database,
    message: InboundMessage,
    campaign_name: str | None,
    *,
    own_number: str | None = None,
    stopped: list[int] | None = None,
) -> tuple[WakeUp | None, bool, int | None]:
    """Store one message; ``(wake-up or None, inserted, its conversation)``. A re-delivery
    changes nothing. Raises ``NoActiveConversation`` when none is active and none may be
    started (``campaign_name`` None, or a WhatsApp number that starts none). A stop keyword
    ends its conversation in the same transaction; ``stopped`` gets the conversation when a
    confirmation waits to be sent."""
    try:
        async with db.transaction() as session:
            stored = await _store_in(session, message, campaign_name, own_number)
            _, inserted, conversation_id = stored
            if inserted and conversation_id is not None:
                confirm = await _stop_if_asked(session, conversation_id, message)
                if confirm and stopped is not None and conversation_id not in stopped:
                    stopped.append(conversation_id)
            return stored
    except _Duplicate:
        return None, False, None


async def _stop_if_asked(
    session: AsyncSession, conversation_id: int, message: InboundMessage
) -> bool:
    """The message is stored under the conversation's row lock: if it says "stop", the lead is
    suppressed and the conversation ended before anyone reads it (a live run mid-step finds
    the end at its next boundary). True when a confirmation was recorded."""
    row = await queries.conversations.lock_conversation(session, conversation_id)
    contact = await queries.contacts.get_contact(session, row.contact_id)
    stopped = await opt_out.honour_stop(session, row, contact, message, utcnow())
    return stopped is not None and stopped.confirm


async def _store_in(
    session: AsyncSession,
    message: InboundMessage,
    campaign_name: str | None,
    own_number: str | None,
) -> tuple[WakeUp | None, bool, int | None]:
    if message.channel == WHATSAPP:
        identity = await _whatsapp_identity(session, message.identity_address)
    else:
        identity = await queries.identities.ensure_identity(
            session, message.channel, message.identity_address
        )
    contact = await queries.contacts.ensure_contact(
        session, message.channel, message.contact_address, message.contact_name
    )
    conversation = await _active_conversation(session, identity, contact, message, own_number)
    created = False
    if conversation is None:
        # A re-delivery of a message whose conversation has ended must not open a new one.
        if await queries.messages.inbound_exists(session, message.provider_message_id):
            return None, False, None
        if campaign_name is None:
            raise NoActiveConversation(message.provider_message_id)
        if message.channel == WHATSAPP and not _starts_here(identity, message, own_number):
            raise NoActiveConversation(message.provider_message_id, _NOT_STARTED_ON_NUMBER)
        campaign = await _campaign_for_new(session, campaign_name)
        if not await _accepts_new(session, campaign_name):
            raise NoActiveConversation(message.provider_message_id, _ARCHIVED)
        conversation, created = await queries.conversations.create_conversation(
            session, identity.id, contact.id, campaign, start_node_of(campaign)
        )
    values = _inbound_values(conversation, message)
    if created:
        values["consumed_step"] = TRIGGER_STEP  # it started the conversation; no answer
    if await queries.messages.insert_inbound(session, values) is None:
        if created:
            raise _Duplicate  # rolls the new conversation back with the transaction
        return None, False, None
    return wakeup_for(conversation, created), True, conversation.id


async def _active_conversation(
    session: AsyncSession,
    identity: Identity,
    contact: Contact,
    message: InboundMessage,
    own_number: str | None,
) -> Conversation | None:
    """The active conversation the message belongs to, locked, or None."""
    conversation = await queries.conversations.lock_active_conversation(
        session, identity.id, contact.id
    )
    if conversation is None and message.context_message_id:
        # A reply to something one of our conversations sent from another account (a LinkedIn
        # sequence's email fallback): it belongs to that conversation, and stops its sequence.
        conversation = await queries.conversations.lock_active_conversation_that_sent(
            session, message.context_message_id
        )
    if conversation is None and message.channel == WHATSAPP:
        conversation = await _whatsapp_lead(session, identity, message, own_number)
    return conversation


_NOT_STARTED_ON_NUMBER = (
    "no active conversation with this contact on this WhatsApp number; it is not the "
    "installation's number and its identity does not start conversations"
)


async def _whatsapp_identity(session: AsyncSession, number: str) -> Identity:
    """The identity that owns the number a message arrived on; a number no identity claims is
    recorded as a WhatsApp identity of its own (the installation's number, the first time)."""
    owners = await queries.identities.whatsapp_number_claimers(session, number)
    if owners:
        return owners[0]
    return await queries.identities.ensure_identity(session, WHATSAPP, number)


async def _whatsapp_lead(
    session: AsyncSession, identity: Identity, message: InboundMessage, own_number: str | None
) -> Conversation | None:
    """A lead of an outreach sequence writing to the number its template came from: the
    contact of such a conversation is the lead's LinkedIn (or email) contact, whose
    ``whatsapp`` field is the number that writes now."""
    phone = message.contact_address.lstrip("+")
    forms = [phone, f"+{phone}"]
    if identity.channel != WHATSAPP:
        found = await queries.conversations.lock_active_conversation_of_lead(
            session, WHATSAPP, forms, identity_id=identity.id
        )
        if found is not None:
            return found
    if own_number is not None and message.identity_address == own_number:
        return await queries.conversations.lock_active_conversation_of_lead(
            session, WHATSAPP, forms, without_own_whatsapp_number=True
        )
    return None


def _starts_here(identity: Identity, message: InboundMessage, own_number: str | None) -> bool:
    """The onboarding bot answers on the installation's number; an identity's other number
    (an outreach number) starts nothing unless it says ``start_conversations: true``."""
    if own_number is None or message.identity_address == own_number:
        return True
    return whatsapp_numbers.starts_conversations(identity)


_ARCHIVED = "no active conversation with this contact; the default campaign is archived"


async def _accepts_new(session: AsyncSession, name: str) -> bool:
    """An archived default campaign starts no conversation for a new contact: the message is
    recorded as unmatched, like one on a channel that starts none."""
    state = await queries.campaigns.campaign_state(session, name)
    return campaign_status.accepts_new_conversations(campaign_status.status_of(state))


async def _campaign_for_new(session: AsyncSession, name: str) -> CampaignVersion:
    try:
        return await queries.campaigns.latest_campaign_version(session, name)
    except NotFound as exc:
        raise NotFound(f"{exc}; the webhook installs PARLEY_DEFAULT_CAMPAIGN at start") from exc


def _unmatched(message: InboundMessage, reason: str) -> JSONDict:
    return {
        "provider_message_id": message.provider_message_id,
        "identity": message.identity_address,
        "contact": message.contact_address,
        "reason": reason,
        "payload": message.raw,
    }


def _inbound_values(conversation: Conversation, message: InboundMessage) -> dict[str, object]:
    values: dict[str, object] = {
        "conversation_id": conversation.id,
        "provider_message_id": message.provider_message_id,
        "type": message.type,
        "text": message.text,
        "reply_id": message.reply_id,
        "payload": message.raw,
    }
    if message.role is InboundRole.TRANSCRIPT:
        values["consumed_step"] = TRIGGER_STEP
    return values


async def apply_status(
    db: Database,
    status: StatusUpdate,
    settle_action: SettleAction | None = None,
    owed: list[WakeUp] | None = None,
) -> bool:
    """A delivery status for one of our messages, else for an outreach action (``owed`` gets
    the run that action's outcome must wake once this commits)."""
    async with db.transaction() as session:
        message = await queries.messages.apply_delivery_status(
            session,
            provider_message_id=status.provider_message_id,
            client_ref=status.client_ref,
            status=status.status,
            error=status.error_summary,
        )
        wakes = owed if owed is not None else []
        if message is not None:
            await opt_out.after_status(session, status, message, utcnow(), wakes)
            return True
        # Not one of our messages: an outreach action's (its key came back as client_ref)?
        if settle_action is not None and await settle_action(session, status, utcnow(), wakes):
            await opt_out.after_status(session, status, None, utcnow(), wakes)
            return True
        # A hard bounce of an email we cannot place still says the address is unusable.
        await opt_out.after_status(session, status, None, utcnow(), wakes)
        await queries.webhook_events.record_webhook_event(
            session,
            status.channel,
            "unmatched_status",
            {
                "id": status.provider_message_id,
                "status": status.status,
                "client_ref": status.client_ref,
            },
        )
        return False


async def record_event(db: Database, channel: str, kind: str, payload: JSONDict) -> None:
    async with db.transaction() as session:
        await queries.webhook_events.record_webhook_event(session, channel, kind, dict(payload))
