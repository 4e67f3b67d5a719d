"""Sending with intent, and reconciling sends whose outcome is unknown (DESIGN rule 4).

An outbound message is first an intent row (``client_ref``, written in the step's transaction),
then a provider call that carries the ref where the channel can (WhatsApp echoes it in status
callbacks), then the recorded result. A replay that finds the intent ``sending`` — the previous
attempt died after the call — waits for the provider's callback instead of sending blind. The
dispatcher's deferred sends use the same functions.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession

from parley.channels.base import SENT_STATUSES, DeliveryStatus, OutboundMessage
from parley.db import queries
from parley.db.models import Message
from parley.errors import ChannelError
from parley.runtime import Runtime

log = logging.getLogger(__name__)


async def record_intent(
    session: AsyncSession, conversation_id: int, step: int, ref: str, message: OutboundMessage
) -> Message:
    """Record what we are about to send, in the transaction that decided to send it."""
    return await queries.ensure_outbound_intent(
        session,
        conversation_id=conversation_id,
        step=step,
        client_ref=ref,
        text=message.text,
        payload=message.payload(),
    )


async def deliver(
    rt: Runtime, intent: Message, message: OutboundMessage, to: str, channel: str
) -> None:
    """Send ``message`` at most once per intent row."""
    ref = intent.client_ref
    assert ref is not None
    if intent.status in SENT_STATUSES:
        return
    if intent.status == DeliveryStatus.SENDING and await _reconciled(rt, ref):
        return
    await _set_status(rt, ref, DeliveryStatus.SENDING)
    try:
        provider_id = await rt.channel(channel).send(to, message, client_ref=ref)
    except ChannelError as exc:
        await _record_failure(rt, ref, exc)
        raise
    await _set_status(rt, ref, DeliveryStatus.SENT, provider_message_id=provider_id)


async def _reconciled(rt: Runtime, client_ref: str) -> bool:
    """A previous attempt crashed after the provider call may have gone out. Wait for the
    provider's status callback (it carries our ref) before deciding it did not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + rt.reconcile_seconds
    while True:
        async with rt.db.read() as session:
            row = await queries.outbound_by_ref(session, client_ref)
        if row is not None and row.status in SENT_STATUSES:
            log.info("send %s reconciled from the provider's status callback", client_ref)
            return True
        if loop.time() >= deadline:
            log.warning(
                "send %s stayed uncertain for %ss; sending again", client_ref, rt.reconcile_seconds
            )
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
        row = await queries.outbound_by_ref(session, client_ref)
        assert row is not None
        await queries.set_outbound_status(
            session, row, status, provider_message_id=provider_message_id, error=error
        )


async def _record_failure(rt: Runtime, client_ref: str, exc: ChannelError) -> None:
    """A refusal with an HTTP answer is known not sent; a timeout may have gone out, so the
    intent stays ``sending`` and the retry reconciles first."""
    if exc.retryable and exc.http_status is None:
        return
    status = DeliveryStatus.PENDING if exc.retryable else DeliveryStatus.FAILED
    await _set_status(rt, client_ref, status, error=f"{type(exc).__name__}: {exc}")
