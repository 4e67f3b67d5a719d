"""One conversation = one durable flow run.

The flow reads like the business process: take the conversation over, then step through the
campaign graph; when the graph waits for the person, wait hot for a while and then suspend so
the run costs nothing until the webhook resumes it. A resumed (or crash-rescheduled) run
starts again from the top, loads the cursor from the database and goes on from the current
step: O(1), however long the conversation already is.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.flow_runs import asuspend_flow_run
from prefect.input import RunInput
from prefect.states import Failed

from parley.settings import get_settings
from parley.state_machine import Status
from tasks.conversation import (
    advance_step,
    begin_run,
    give_up_step,
    prepare_suspend,
    wait_for_reply,
)
from tasks.infra import riding_out_outages
from tasks.runtime import keep_lease


class ResumeInput(RunInput):
    """What a resume hands the run: why it was woken. The message itself is in the inbox."""

    reason: Literal["message", "timer", "operator", "sweep"] = "message"
    conversation_id: int


def _current_flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


async def _suspend(key: str) -> None:
    """Suspend through a Prefect API blip: the row already says ``suspended``, so a webhook
    storing a message meanwhile resumes the run as soon as Prefect has it paused."""
    if delay := get_settings().suspend_delay_seconds:
        await asyncio.sleep(delay)  # fault injection: the race window, made wide on purpose
    await riding_out_outages(
        lambda: asuspend_flow_run(wait_for_input=ResumeInput, key=key, timeout=None),
        f"suspend {key}",
    )


@flow(name="conversation", persist_result=True, log_prints=True)
async def conversation(conversation_id: int) -> str | State[object]:
    logger = get_run_logger()
    cursor = await begin_run(conversation_id, _current_flow_run_id())
    hot_seconds = get_settings().hot_wait_seconds
    async with keep_lease(conversation_id):
        while cursor.active:
            if cursor.awaiting_reply and not await wait_for_reply(
                conversation_id, cursor.step, hot_seconds
            ):
                decision = await prepare_suspend(conversation_id, cursor.step)
                if decision.suspend:
                    logger.info("waiting for the contact; suspending (%s)", decision.key)
                    await _suspend(decision.key)
                continue
            try:
                cursor = await advance_step(conversation_id, cursor.step, cursor.node)
            except Exception as exc:
                logger.error("step %s (%s) failed for good: %r", cursor.step, cursor.node, exc)
                reason = f"step {cursor.step} ({cursor.node}): {exc!r}"
                cursor = await give_up_step(conversation_id, cursor.step, reason)
    logger.info("conversation %s ended: %s", conversation_id, cursor.status)
    if cursor.status is Status.FAILED:
        return Failed(message=f"conversation {conversation_id} failed; see its last_error")
    return cursor.status
