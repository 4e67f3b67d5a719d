"""Starting and resuming conversation flow runs, after the message is already durable.

Everything here may fail (Prefect down, run not suspended yet) without losing anything: the
message is in the inbox, and the sweep retries whatever a request could not finish.
"""

from __future__ import annotations

import asyncio
import logging
import random
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import NotPausedError, ObjectNotFound, PrefectHTTPStatusError
from prefect.flow_runs import aresume_flow_run

from parley.db import Database, queries
from parley.inbox import WakeUp
from parley.settings import Settings

log = logging.getLogger(__name__)

PREFECT_UNAVAILABLE = (httpx.HTTPError, PrefectHTTPStatusError, OSError)


class ResumeRejected(Exception):
    """Prefect refused the run input (it fails the run's input model): a caller error, 422."""


def mask_phone(phone: str) -> str:
    digits = phone.lstrip("+")
    if len(digits) <= 6:
        return "•" * len(digits)
    return f"+{digits[:3]}{'•' * (len(digits) - 7)}{digits[-4:]}"


async def start_run(db: Database, settings: Settings, conversation_id: int) -> str | None:
    """Create the conversation's flow run; the idempotency key makes a repeat return the same
    run, so the sweep and a webhook racing to start it are harmless."""
    async with db.read() as session:
        conv = await queries.get_conversation(session, conversation_id)
        contact = await queries.get_contact(session, conv.contact_id)
        campaign = await queries.get_campaign_version(session, conv.campaign_version_id)
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(settings.conversation_deployment)
        run = await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"conversation_id": conversation_id},
            name=f"{contact.channel} {mask_phone(contact.address)} #{conversation_id}",
            tags=[
                f"campaign:{campaign.name}",
                f"campaign-version:{campaign.version}",
                f"channel:{contact.channel}",
            ],
            idempotency_key=f"parley-conversation-{conv.uid}",
        )
    async with db.transaction() as session:
        conv = await queries.lock_conversation(session, conversation_id)
        if conv.flow_run_id is None:
            conv.flow_run_id = str(run.id)
            queries.touch(conv)
    log.info("started flow run %s for conversation %s", run.id, conversation_id)
    return str(run.id)


async def resume_run(
    db: Database, conversation_id: int, flow_run_id: str, *, give_up_after: float
) -> bool:
    """Resume a suspended run, retrying while Prefect says it is not paused yet (the run marks
    itself suspended in our row a moment before Prefect has it Paused with its input schema).
    Returns True once resumed or once the conversation is no longer waiting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    delay = 0.05
    while True:
        try:
            await aresume_flow_run(
                UUID(flow_run_id),
                run_input={"reason": "message", "conversation_id": conversation_id},
            )
            log.info("resumed flow run %s (conversation %s)", flow_run_id, conversation_id)
            return True
        except (NotPausedError, ObjectNotFound, *PREFECT_UNAVAILABLE) as exc:
            log.debug("resume of %s not possible yet: %r", flow_run_id, exc)
        except RuntimeError as exc:
            if "schema not found" not in str(exc):
                raise ResumeRejected(str(exc)) from exc
        if not await _still_suspended(db, conversation_id):
            return True
        if loop.time() >= deadline:
            log.warning("gave up resuming %s for now; the sweep will retry", flow_run_id)
            return False
        await asyncio.sleep(delay * (1 + random.random() / 2))
        delay = min(delay * 2, 2.0)


async def _still_suspended(db: Database, conversation_id: int) -> bool:
    async with db.read() as session:
        return (await queries.get_conversation(session, conversation_id)).status == "suspended"


async def wake(db: Database, settings: Settings, wakeup: WakeUp) -> None:
    try:
        if wakeup.action == "start":
            await start_run(db, settings, wakeup.conversation_id)
        elif wakeup.flow_run_id:
            await resume_run(
                db,
                wakeup.conversation_id,
                wakeup.flow_run_id,
                give_up_after=settings.resume_retry_seconds,
            )
    except PREFECT_UNAVAILABLE as exc:
        log.warning(
            "Prefect unavailable for conversation %s (%r); the sweep will retry",
            wakeup.conversation_id,
            exc,
        )
