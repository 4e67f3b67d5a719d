"""One conversation = one durable flow run.

The flow reads like the business process: take the conversation over, then step through the
campaign graph. When the graph waits for the person, wait hot for a while and then suspend; when
it waits for time, a task or an operator, suspend at once — a suspended run costs nothing until
the webhook (a message), the dispatcher (a timer) or an operator resumes it. A resumed (or
crash-rescheduled) run starts again from the top, loads the cursor from the database and looks
again from the current step: O(1), however long the conversation already is.
"""

from __future__ import annotations

import asyncio

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.flow_runs import asuspend_flow_run
from prefect.states import Cancelled, Failed

from parley.conversation.state_machine import Cursor
from parley.vocabulary import Status, WaitKind
from prefect_adapter.composition import get_runtime, get_settings, keep_lease
from prefect_adapter.outages import riding_out_outages
from prefect_adapter.resume_form import resume_form
from tasks.conversation import (
    advance_step,
    begin_run,
    give_up_step,
    prepare_suspend,
    take_task_answers,
    wait_for_reply,
)


def _current_flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


async def _suspend(conversation_id: int, key: str) -> None:
    """Suspend through a Prefect API blip: the row already says ``suspended``, so a webhook
    storing a message meanwhile resumes the run as soon as Prefect has it paused. At an open
    task the Resume dialog offers the task's result form."""
    if delay := get_settings().suspend_delay_seconds:
        await asyncio.sleep(delay)  # fault injection: the race window, made wide on purpose
    form = await resume_form(conversation_id)
    await riding_out_outages(
        lambda: asuspend_flow_run(wait_for_input=form, key=key, timeout=None),
        f"suspend {key}",
    )


@flow(name="conversation", persist_result=True, log_prints=True)
async def conversation(conversation_id: int) -> str | State[object]:
    logger = get_run_logger()
    run_id = _current_flow_run_id()
    cursor = await begin_run(conversation_id, run_id)
    if run_id and cursor.wait is not None and cursor.wait.kind is WaitKind.OPERATOR:
        await take_task_answers(conversation_id, run_id)  # given in the Prefect UI's dialog
    hot_seconds = get_settings().hot_wait_seconds
    look_again = True  # a (re)started run first looks at what changed while it slept
    async with keep_lease(conversation_id):
        while cursor.active:
            if cursor.status is not Status.PAUSED and (look_again or await _due(cursor)):
                look_again = False
                cursor = await _step(conversation_id, cursor)
            elif (
                cursor.status is not Status.PAUSED
                and cursor.wait is not None
                and cursor.wait.kind is WaitKind.REPLY
                and hot_seconds
                and await wait_for_reply(conversation_id, cursor.step, hot_seconds)
            ):
                look_again = True
            else:
                decision = await prepare_suspend(conversation_id, cursor.step)
                if decision.suspend:
                    logger.info("%s; suspending (%s)", _waiting_for(cursor), decision.key)
                    await _suspend(conversation_id, decision.key)
                look_again = True
    logger.info("conversation %s ended: %s", conversation_id, cursor.status)
    if cursor.status is Status.FAILED:
        return Failed(message=f"conversation {conversation_id} failed; see its last_error")
    if cursor.status is Status.CANCELLED:
        return Cancelled(message=f"conversation {conversation_id} was cancelled")
    return cursor.status


async def _step(conversation_id: int, cursor: Cursor) -> Cursor:
    try:
        return await advance_step(conversation_id, cursor.step, cursor.node)
    except Exception as exc:
        get_run_logger().error("step %s (%s) failed for good: %r", cursor.step, cursor.node, exc)
        reason = f"step {cursor.step} ({cursor.node}): {exc!r}"
        return await give_up_step(conversation_id, cursor.step, reason)


async def _due(cursor: Cursor) -> bool:
    """Nothing to wait for, or the wait's time has come (on the runtime's clock)."""
    if cursor.wait is None:
        return True
    until = cursor.wait.until
    return until is not None and until <= (await get_runtime()).clock.now()


def _waiting_for(cursor: Cursor) -> str:
    if cursor.status is Status.PAUSED:
        return "paused: waiting for an operator to resume it"
    assert cursor.wait is not None
    until = f" until {cursor.wait.until:%Y-%m-%d %H:%M:%S} UTC" if cursor.wait.until else ""
    return f"waiting for {cursor.wait.kind.value} at {cursor.node}{until}"
