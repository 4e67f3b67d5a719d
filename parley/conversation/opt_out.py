"""When the lead says "stop", or the address proves unusable: suppress it and end the sequence.

Three ways in, one way out (``end_suppressed``):

* an inbound message whose whole text is one of the campaign's ``stop_keywords``
  (``honour_stop``, in the inbox's storing transaction under the conversation's row lock): the
  address it came from is suppressed installation-wide (``unsubscribed``) and the conversation
  ends; on WhatsApp — which requires honouring opt-outs — a confirmation is recorded as a send
  intent in the same transaction and delivered after the commit (``send_confirmation``);
* a hard bounce or a complaint about an email we sent (``after_status``): the recipient is
  suppressed (``bounced`` / ``complained``) and the conversation the email belonged to ends;
* the dispatcher's freshness check finding the lead suppressed (``parley.outreach.dispatch``).

The conversation ends ``completed`` with a reason starting ``suppressed``: the sequence did not
fail, the lead is done with. Ending goes through ``executor.end_from_outside`` like an
operator's cancel: unsent intents and held actions are dropped, a live run sees the end at its
next boundary, a suspended one is owed a resume to finish (the returned ``WakeUp``; the row's
``wake_requested_at`` is the repair's safety net). Everything is idempotent: a re-delivered
message or status finds the address listed and the conversation ended, and changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from parley import suppression
from parley.campaign.registry import campaign_of
from parley.channels.base import InboundMessage, InboundRole, OutboundMessage, StatusUpdate
from parley.conversation import handoff, outbox, whatsapp_numbers
from parley.conversation import row as conversation_row
from parley.conversation.executor import end_from_outside
from parley.conversation.handshake import WakeUp
from parley.db import queries
from parley.db.models import Contact, Conversation, Message
from parley.errors import InvalidInput, ParleyError
from parley.runtime import Runtime
from parley.vocabulary import SUPPRESSED, TERMINAL, DeliveryStatus, Status

log = logging.getLogger(__name__)

WHATSAPP = "whatsapp"
CONFIRMS_ON = frozenset({WHATSAPP})
"""Channels where a stop is confirmed: WhatsApp requires it; an email or a LinkedIn message
after "unsubscribe" would be one message too many."""


def confirmation_ref(conversation_id: int) -> str:
    """One confirmation per conversation: a re-delivered STOP finds it recorded already."""
    return f"conv-{conversation_id}-stop"


async def end_suppressed(
    session: AsyncSession, row: Conversation, reason: str, now: datetime
) -> WakeUp | None:
    """End the (locked) conversation because its lead may not be contacted; the run to resume
    once this commits, if it sleeps."""
    if row.status in TERMINAL:
        return None
    sleeping = row.status is Status.SUSPENDED and row.flow_run_id is not None
    await end_from_outside(session, row, Status.COMPLETED, reason, now)
    conversation_row.request_wake(row)
    return WakeUp(row.id, "resume", row.flow_run_id) if sleeping else None


# --- "STOP" -----------------------------------------------------------------------------------


async def honour_stop(
    session: AsyncSession,
    row: Conversation,
    contact: Contact,
    message: InboundMessage,
    now: datetime,
) -> Stopped | None:
    """If the (just stored) message is a stop keyword of the conversation's campaign: suppress
    its sender's address, end the conversation, record the confirmation where the channel takes
    one. None when it was no stop."""
    if message.role is not InboundRole.ANSWER or row.status in TERMINAL:
        return None
    version = await queries.campaigns.get_campaign_version(session, row.campaign_version_id)
    campaign = campaign_of(version)
    if not campaign.is_stop(message.text):
        return None
    address = await _suppress_sender(session, contact, message)
    await end_suppressed(session, row, f"{SUPPRESSED}: {address} wrote {message.text!r}", now)
    if message.channel not in CONFIRMS_ON or not campaign.stop_confirmation:
        return Stopped(confirm=False)
    await outbox.record_intent(
        session,
        row.id,
        row.step,
        confirmation_ref(row.id),
        OutboundMessage(campaign.stop_confirmation),
    )
    return Stopped(confirm=True)


@dataclass(frozen=True)
class Stopped:
    """A stop was honoured; ``confirm``: its confirmation waits to be sent."""

    confirm: bool


async def _suppress_sender(session: AsyncSession, contact: Contact, message: InboundMessage) -> str:
    """The address that wrote, else (a LinkedIn member id is no address) the lead's own."""
    note = f"wrote {message.text!r} on {message.channel}"
    for raw in (message.contact_address, *suppression.lead_addresses(contact)):
        try:
            entry, _ = await suppression.add(
                session, raw, "unsubscribed", note=note, by=f"inbound {message.channel}"
            )
        except InvalidInput:
            continue
        return entry.address
    log.warning("contact %s wrote stop but has no address to suppress", contact.id)
    return message.contact_address


async def send_confirmation(rt: Runtime, conversation_id: int) -> bool:
    """Deliver the recorded stop confirmation, at most once (``outbox.deliver``'s claim): the
    webhook calls it after the commit. Best effort: a refusal is recorded on the message."""
    async with rt.db.read() as session:
        intent = await queries.messages.outbound_by_ref(session, confirmation_ref(conversation_id))
        if intent is None or intent.status != DeliveryStatus.PENDING:
            return False
        row = await queries.conversations.get_conversation(session, conversation_id)
        contact = await queries.contacts.get_contact(session, row.contact_id)
        identity = await queries.identities.get_identity(session, row.identity_id)
    to = handoff.recipient(contact, WHATSAPP)
    if to is None:
        return False
    sender = whatsapp_numbers.whatsapp_sender(identity)
    try:
        await outbox.deliver(
            rt, intent, OutboundMessage(intent.text or ""), to, WHATSAPP, sender=sender
        )
    except ParleyError as exc:
        log.warning("stop confirmation of conversation %s not sent: %s", conversation_id, exc)
        return False
    return True


# --- bounces and complaints -------------------------------------------------------------------


async def after_status(
    session: AsyncSession,
    status: StatusUpdate,
    message: Message | None,
    now: datetime,
    owed: list[WakeUp],
) -> None:
    """A status that means the address is unusable (``status.suppresses``: a hard bounce, a
    complaint) suppresses the recipient installation-wide — also when the email it is about is
    unknown to us — and ends the conversation the email belonged to."""
    if status.suppresses is None or not status.recipient:
        return
    try:
        entry, _ = await suppression.add(
            session,
            status.recipient,
            status.suppresses,
            note=status.error_summary,
            by=f"{status.channel} {status.suppresses}",
        )
    except InvalidInput as exc:
        log.warning("%s status for an unusable recipient: %s", status.channel, exc)
        return
    conversation_id = await _conversation_of(session, status, message)
    if conversation_id is None:
        return
    row = await queries.conversations.lock_conversation(session, conversation_id)
    reason = f"{SUPPRESSED}: {entry.address} {status.suppresses}"
    wakeup = await end_suppressed(session, row, reason, now)
    if wakeup is not None and wakeup not in owed:
        owed.append(wakeup)


async def _conversation_of(
    session: AsyncSession, status: StatusUpdate, message: Message | None
) -> int | None:
    if message is not None:
        return message.conversation_id
    if status.client_ref is None:
        return None
    action = await queries.actions.lock_action_by_key(session, status.client_ref)
    return None if action is None else action.conversation_id
