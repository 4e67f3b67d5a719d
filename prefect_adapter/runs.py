"""Run control: starting, resuming and rescheduling conversation flow runs.

Plain async functions, so the webhook calls them right after answering 200 and the dispatcher
flow calls them from its tasks. Everything here may fail (Prefect down, run not suspended yet)
without losing anything: the message is already in the inbox, the row says what is owed, and
the dispatcher retries whatever a caller could not finish.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any
from uuid import UUID

import httpx
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import NotPausedError, ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Crashed

from parley.conversation import row as conversation_row
from parley.conversation.handshake import WakeUp
from parley.conversation.lifecycle import Change
from parley.conversation.operator_views import mask_address
from parley.db import Database, queries
from parley.settings import Settings
from parley.vocabulary import Status
from prefect_adapter.client import deployment_id, prefect_api, resume

log = logging.getLogger(__name__)

PREFECT_UNAVAILABLE = (httpx.HTTPError, PrefectHTTPStatusError, OSError)


class ResumeRejected(Exception):
    """Prefect refused the run input (it fails the run's input model): a caller error, 422."""


class ResumeOutcome(Enum):
    RESUMED = "resumed"
    NOT_PAUSED = "not paused"  # not Paused yet (or any more): retry, or look at its state
    GONE = "gone"  # the run does not exist


async def start_run(db: Database, settings: Settings, conversation_id: int) -> str:
    """Create the conversation's flow run; the idempotency key makes a repeat return the same
    run, so the dispatcher and a webhook racing to start it are harmless."""
    return await create_run(db, settings, conversation_id, attempt=0)


async def create_run(
    db: Database, settings: Settings, conversation_id: int, *, attempt: int
) -> str:
    """A flow run for the conversation; ``attempt`` > 0 re-homes a conversation whose run is
    gone (the new run loads the row and goes on from the current step).

    The idempotency key makes a repeat (a racing dispatcher, a retry after a crash) return the
    same run. A key Prefect answers with a *finished* run belongs to an earlier attempt (a
    retried failed conversation, a re-home whose count started again): the next key names
    that run, so each attempt gets a run of its own and racers still agree on which."""
    async with db.read() as session:
        conv, contact, campaign = await queries.conversations.conversation_with_context(
            session, conversation_id
        )
    if conv.flow_run_id is not None and not attempt:
        return conv.flow_run_id  # another caller started it meanwhile
    key = f"parley-conversation-{conv.uid}" + (f"-{attempt}" if attempt else "")
    arguments: dict[str, Any] = {
        "parameters": {"conversation_id": conversation_id},
        "name": f"{contact.channel} {mask_address(contact.address)} #{conversation_id}",
        "tags": [
            f"campaign:{campaign.name}",
            f"campaign-version:{campaign.version}",
            f"channel:{contact.channel}",
        ],
    }
    run = await _create_from_deployment(settings.conversation_deployment, key, arguments)
    for _ in range(MAX_EARLIER_ATTEMPTS):
        if run.state is None or not run.state.is_final():
            break
        log.info("run %s of conversation %s had ended; a new one", run.id, conversation_id)
        key = f"parley-conversation-{conv.uid}-after-{run.id}"
        run = await _create_from_deployment(settings.conversation_deployment, key, arguments)
    async with db.transaction() as session:
        conv = await queries.conversations.lock_conversation(session, conversation_id)
        if conv.flow_run_id is None or attempt:
            conversation_row.run_created(conv, str(run.id))
    log.info("flow run %s for conversation %s", run.id, conversation_id)
    return str(run.id)


MAX_EARLIER_ATTEMPTS = 100
"""Finished runs followed from a conversation's first key: one per retry or re-home."""


async def _create_from_deployment(name: str, key: str, arguments: dict[str, Any]) -> FlowRun:
    async with prefect_api() as client:
        try:
            return await client.create_flow_run_from_deployment(
                await deployment_id(name), idempotency_key=key, **arguments
            )
        except ObjectNotFound:  # redeployed under a new id since we asked
            return await client.create_flow_run_from_deployment(
                await deployment_id(name, fresh=True), idempotency_key=key, **arguments
            )


async def resume_once(flow_run_id: str, conversation_id: int, *, reason: str) -> ResumeOutcome:
    """One attempt; Prefect refusing the input itself (it fails the run's input model) is a
    caller error and raises ``ResumeRejected``."""
    try:
        await resume(
            UUID(flow_run_id), run_input={"reason": reason, "conversation_id": conversation_id}
        )
    except NotPausedError:
        return ResumeOutcome.NOT_PAUSED
    except ObjectNotFound:
        return ResumeOutcome.GONE
    except RuntimeError as exc:
        if "schema not found" in str(exc):  # paused a moment ago, input schema not saved yet
            return ResumeOutcome.NOT_PAUSED
        raise ResumeRejected(str(exc)) from exc
    log.info("resumed flow run %s (conversation %s, %s)", flow_run_id, conversation_id, reason)
    return ResumeOutcome.RESUMED


async def resume_run(
    db: Database,
    conversation_id: int,
    flow_run_id: str,
    *,
    give_up_after: float,
    reason: str = "message",
) -> bool:
    """Resume a suspended run, retrying while Prefect says it is not paused yet (the run marks
    itself suspended in our row a moment before Prefect has it Paused with its input schema).
    Returns True once resumed or once the conversation is no longer waiting; False leaves it to
    the dispatcher. Each retry is recorded, so an operator (and a test) can see the race."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    delay, retries = 0.05, 0
    while True:
        try:  # the client's own retries must not outlast the window either
            async with asyncio.timeout(max(0.1, deadline - loop.time())):
                outcome = await resume_once(flow_run_id, conversation_id, reason=reason)
        except (*PREFECT_UNAVAILABLE, TimeoutError) as exc:
            log.debug("resume of %s not possible yet: %r", flow_run_id, exc)
            outcome = ResumeOutcome.NOT_PAUSED
        if outcome is ResumeOutcome.RESUMED:
            await _handed_over(db, conversation_id, retries)
            return True
        if not await _still_suspended(db, conversation_id):
            return True
        if outcome is ResumeOutcome.GONE or loop.time() >= deadline:
            log.warning("gave up resuming %s for now; the dispatcher will", flow_run_id)
            return False
        retries += 1
        await asyncio.sleep(delay * (1 + random.random() / 2))
        delay = min(delay * 2, 2.0)


async def _handed_over(db: Database, conversation_id: int, retries: int) -> None:
    async with db.transaction() as session:
        conv = await queries.conversations.lock_conversation(session, conversation_id)
        if conv.status == Status.SUSPENDED:
            conversation_row.handed_over(conv)
        if retries:
            await queries.webhook_events.record_webhook_event(
                session,
                "prefect",
                "resume_retried",
                {"conversation_id": conversation_id, "retries": retries},
            )


async def _still_suspended(db: Database, conversation_id: int) -> bool:
    async with db.read() as session:
        return (
            await queries.conversations.get_conversation(session, conversation_id)
        ).status == Status.SUSPENDED


async def wake(db: Database, settings: Settings, wakeup: WakeUp, reason: str = "message") -> None:
    """Right after the webhook answered 200: start or resume; whatever fails here the
    dispatcher finishes (the message, or the action's outcome, is already committed)."""
    try:
        if wakeup.action == "start":
            await start_run(db, settings, wakeup.conversation_id)
        elif wakeup.flow_run_id:
            await resume_run(
                db,
                wakeup.conversation_id,
                wakeup.flow_run_id,
                give_up_after=settings.resume_retry_seconds,
                reason=reason,
            )
    except PREFECT_UNAVAILABLE as exc:
        log.warning(
            "Prefect unavailable for conversation %s (%r); the dispatcher will retry",
            wakeup.conversation_id,
            exc,
        )
    except ResumeRejected as exc:
        # A run suspended by an older release may not know this resume reason: the
        # dispatcher's repair resumes it with one it knows (the row asked for the wake).
        log.warning(
            "conversation %s: its run refused the %s resume (%s); the dispatcher will retry",
            wakeup.conversation_id,
            reason,
            exc,
        )


async def carry_out(db: Database, settings: Settings, change: Change) -> bool:
    """What an operator's change owes the run, at once (the REST API calls this right after
    the change committed). False leaves it to the dispatcher, which finds the row's
    ``wake_requested_at`` within a tick; nothing is lost either way."""
    try:
        if change.run == "start":
            await start_run(db, settings, change.conversation_id)
        elif change.run == "resume" and change.flow_run_id:
            return await resume_run(
                db,
                change.conversation_id,
                change.flow_run_id,
                give_up_after=settings.resume_retry_seconds,
                reason="operator",
            )
        elif change.run == "end" and change.flow_run_id:
            outcome = await resume_once(
                change.flow_run_id, change.conversation_id, reason="operator"
            )
            return outcome is not ResumeOutcome.NOT_PAUSED
    except PREFECT_UNAVAILABLE as exc:
        log.warning(
            "Prefect unavailable for conversation %s (%r); the dispatcher will retry",
            change.conversation_id,
            exc,
        )
        return False
    return True


async def crash_dead_dispatcher_runs(settings: Settings) -> int:
    """A live dispatcher run ends after one interval; one still Running after two lost its
    process (a killed worker). Mark it Crashed so the UI shows what happened."""
    cutoff = datetime.now(UTC) - timedelta(seconds=2 * settings.dispatcher_interval_seconds)
    async with prefect_api() as client:
        deployment = await client.read_deployment_by_name(settings.dispatcher_deployment)
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
            limit=50,
        )
        dead = [run for run in runs if run.start_time is not None and run.start_time < cutoff]
        for run in dead:
            await client.set_flow_run_state(
                run.id, Crashed(message="dispatcher process gone: still Running after 2 intervals")
            )
    return len(dead)


async def ensure_next_run(deployment_id: UUID, *, within: timedelta, this_run: UUID) -> bool:
    """The relay: a dispatcher run about to end makes sure another follows. Prefect's scheduler
    fills a deployment's schedule every minute or so, which can leave a gap after a fresh
    deployment or a slow server; a run tagged ``relay`` closes it. Nothing is created when
    another run is already pending or running, or one is scheduled within ``within``."""
    async with prefect_api() as client:
        by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        live = await client.read_flow_runs(
            deployment_filter=by_deployment,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                )
            ),
            limit=5,
        )
        if any(run.id != this_run for run in live):
            return False
        soon = await client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=[deployment_id],
            scheduled_before=datetime.now(UTC) + within,
            limit=1,
        )
        if soon:
            return False
        await client.create_flow_run_from_deployment(deployment_id, tags=["parley", "relay"])
    return True


async def slot_taken(limit_name: str) -> bool:
    """Whether every slot of a global concurrency limit is held right now (asking does not
    queue for it, and a refusal is not an error worth logging)."""
    async with prefect_api() as client:
        limit = await client.read_global_concurrency_limit_by_name(limit_name)
    return limit.active_slots >= limit.limit
