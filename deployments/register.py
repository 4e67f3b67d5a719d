"""Registering what Parley needs in Prefect: its deployments and its concurrency limits.

``python -m deployments.worker`` calls ``register_deployments`` at start, so a fresh Prefect
server (or one that lost its database) is set up by simply starting that worker. With the
``parley`` worker type (``prefect worker start --pool parley``) deployments come from
``prefect deploy --all`` (prefect.yaml) instead; that worker still creates the dispatcher's
concurrency limit and kicks a dispatcher run at start (``ensure_concurrency_limit``,
``kick_dispatcher``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound

from flows.conversation import conversation
from flows.dispatcher import dispatcher
from parley.settings import Settings

log = logging.getLogger("parley.register")
KICK_UNLESS_DUE_WITHIN = timedelta(seconds=15)


async def register_deployments(settings: Settings) -> dict[UUID, Flow[..., Any]]:
    """The ``conversation`` deployment (started by the webhook) and the scheduled
    ``dispatcher``, by deployment id: what the in-process worker serves."""
    await ensure_concurrency_limit(settings.dispatcher_limit, limit=1)
    conversation_id = await _apply(
        conversation,
        _deployment_name(settings.conversation_deployment),
        description="One durable Parley conversation per run (started and resumed by the webhook).",
    )
    dispatcher_id = await _apply(
        dispatcher,
        _deployment_name(settings.dispatcher_deployment),
        description="Starts, resumes and recovers conversation runs; one active at a time.",
        interval=settings.dispatcher_interval_seconds,
    )
    return {conversation_id: conversation, dispatcher_id: dispatcher}


async def kick_dispatcher(deployment_ids: list[UUID]) -> None:
    """Start a dispatcher run now rather than at the next scheduled time: a worker that comes
    back after a crash recovers its conversations at once. Not when the schedule has one due
    in a moment anyway (a freshly registered deployment)."""
    soon = datetime.now(UTC) + KICK_UNLESS_DUE_WITHIN
    async with get_client() as client:
        for deployment_id in deployment_ids:
            due = await client.get_scheduled_flow_runs_for_deployments(
                deployment_ids=[deployment_id], scheduled_before=soon, limit=1
            )
            if not due:
                await client.create_flow_run_from_deployment(deployment_id, tags=["parley", "kick"])


async def ensure_concurrency_limit(name: str, *, limit: int) -> None:
    """Prefect never creates a limit implicitly, and Parley acquires with ``strict=True``."""
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )
            log.info("created global concurrency limit %r (%d)", name, limit)


async def _apply(
    flow: Flow[..., Any], name: str, *, description: str, interval: float | None = None
) -> UUID:
    deployment = await flow.ato_deployment(
        name=name, tags=["parley"], description=description, interval=interval
    )
    assert isinstance(deployment, RunnerDeployment)
    deployment_id: UUID = await deployment.aapply()
    return deployment_id


def _deployment_name(qualified: str) -> str:
    """``flow/deployment`` → ``deployment``."""
    return qualified.split("/", 1)[1]
