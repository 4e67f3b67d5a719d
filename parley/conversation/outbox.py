"""Sending with intent, and reconciling sends whose outcome is unknown (durability rule 4 of
docs/architecture.md).

An outbound message is first an intent row (``client_ref``, written in the step's transaction),
then a claim (pending → sending, one conditional UPDATE: of two executions racing, exactly one
sends), then the provider call carrying the ref where the channel can (WhatsApp echoes it in
status callbacks), then the recorded result.

A send is *uncertain* when the provider may have accepted it without us hearing back: the
process died after the call, the call timed out, or a 5xx came from somewhere after the
provider. An uncertain send is reconciled from the provider's status callback before it is
repeated; only a send known not to have happened (a refused connection, a 429, a 4xx) is
simply retried. The dispatcher's deferred sends use the same functions.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession

from parley.channels.base import OutboundMessage, SenderIdentity, SendsAs
from parley.db import queries
from parley.db.models import Message, utcnow
from parley.errors import ChannelError, ParleyError, TransientChannelError
from parley.runtime import Runtime
from parley.vocabulary import SENT_STATUSES, DeliveryStatus

log = logging.getLogger(__name__)


class SendDropped(ParleyError):
    """The intent was dropped (its conversation ended or moved on) before it went out."""


class SendSuperseded(SendDropped):
    """A follow-up was dropped because the contact wrote before it went out."""


async def record_intent(
    session: AsyncSession, conversation_id: int, step: int, ref: str, message: OutboundMessage
) -> Message:
    """Record what we are about to send, in the transaction that decided to send it."""
    return await queries.messages.ensure_outbound_intent(
        session,
        conversation_id=conversation_id,
        step=step,
        client_ref=ref,
        text=message.text,
        payload=message.payload(),
    )


async def deliver(
    rt: Runtime,
    intent: Message,
    message: OutboundMessage,
    to: str,
    channel: str,
    *,
    unless_replied: int | None = None,
    sender: SenderIdentity | None = None,
) -> None:
    """Send ``message`` at most once per intent row. ``unless_replied`` (a conversation id)
    makes it a follow-up: if the contact wrote before the claim, it is dropped instead.
    ``sender``: the account it goes out from, where the channel can choose (``SendsAs``)."""
    ref = intent.client_ref
    assert ref is not None
    if intent.status in SENT_STATUSES:
        return
    if unless_replied is not None:
        await _drop_if_replied(rt, ref, unless_replied)
    if not await _claim(rt, ref):
        return  # reconciled: it went out, from this execution's past or another's present
    try:
        provider_id = await _send(rt, channel, to, message, ref, sender)
    except ChannelError as exc:
        await _record_failure(rt, ref, exc)
        raise
    await _set_status(rt, ref, DeliveryStatus.SENT, provider_message_id=provider_id)


async def _send(
    rt: Runtime,
    channel: str,
    to: str,
    message: OutboundMessage,
    ref: str,
    sender: SenderIdentity | None,
) -> str:
    provider = rt.channel(channel)
    if sender is not None and isinstance(provider, SendsAs):
        return await provider.send_as(sender, to, message, client_ref=ref)
    return await provider.send(to, message, client_ref=ref)


async def _drop_if_replied(rt: Runtime, ref: str, conversation_id: int) -> None:
    """Under the conversation's row lock — the one the webhook stores messages under — so a
    message is either seen here (the follow-up is dropped) or stored after the claim below."""
    async with rt.db.transaction() as session:
        await queries.conversations.lock_conversation(session, conversation_id)
        if not await queries.messages.has_unconsumed_inbound(session, conversation_id):
            return
        row = await queries.messages.outbound_by_ref(session, ref)
        if row is None or row.status != DeliveryStatus.PENDING:
            return
        await queries.messages.set_outbound_status(
            session, row, DeliveryStatus.DROPPED, error="the contact wrote before it went out"
        )
    log.info("follow-up %s not sent: the contact wrote first", ref)
    raise SendSuperseded(f"follow-up {ref} dropped: the contact wrote before it went out")


async def _claim(rt: Runtime, ref: str) -> bool:
    """True: this execution must send now. False: the message is known sent."""
    async with rt.db.transaction() as session:
        if await queries.messages.claim_for_sending(session, ref, utcnow()):
            return True
        row = await queries.messages.outbound_by_ref(session, ref)
    assert row is not None
    if row.status in SENT_STATUSES:
        return False
    if row.status == DeliveryStatus.DROPPED:
        raise SendDropped(f"send {ref} was dropped: {row.error or 'its conversation moved on'}")
    if row.status == DeliveryStatus.FAILED:
        raise ChannelError(f"send {ref} already failed: {row.error}")
    # sending: a previous attempt (ours, dead) or a concurrent one (alive) holds the claim.
    if await _reconciled(rt, ref):
        return False
    async with rt.db.transaction() as session:
        if await queries.messages.take_over_claim(session, ref, row.claimed_at, utcnow()):
            log.warning(
                "send %s stayed uncertain for %ss; sending again", ref, rt.reconcile_seconds
            )
            return True
    return not await _reconciled(rt, ref)  # someone else took it over: wait for their outcome


async def _reconciled(rt: Runtime, client_ref: str) -> bool:
    """Wait for the provider's status callback (it carries our ref) or another execution's
    recorded result, up to ``reconcile_seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + rt.reconcile_seconds
    while True:
        async with rt.db.read() as session:
            row = await queries.messages.outbound_by_ref(session, client_ref)
        if row is not None and row.status in SENT_STATUSES:
            log.info("send %s reconciled: the provider has it", client_ref)
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(max(rt.poll_seconds, 0.2))


async def _set_status(
    rt: Runtime,
    client_ref: str,
    status: DeliveryStatus,
    *,
    provider_message_id: str | None = None,
    error: str | None = None,
) -> None:
    async with rt.db.transaction() as session:
        row = await queries.messages.outbound_by_ref(session, client_ref)
        assert row is not None
        await queries.messages.set_outbound_status(
            session, row, status, provider_message_id=provider_message_id, error=error
        )


async def _record_failure(rt: Runtime, client_ref: str, exc: ChannelError) -> None:
    """Known not sent (a refused connection, a 429, a 4xx) goes back to pending or to failed;
    anything the provider may have accepted stays ``sending``, so the retry reconciles first."""
    if isinstance(exc, TransientChannelError) and exc.maybe_sent:
        return
    status = DeliveryStatus.PENDING if exc.retryable else DeliveryStatus.FAILED
    await _set_status(rt, client_ref, status, error=f"{type(exc).__name__}: {exc}")
