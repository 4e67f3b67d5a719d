"""The conversation's tasks. Step results are cached under the step counter, never call order.

``conv:{id}:step:{n}`` names step *n* of conversation *id*; the flow run id is appended because
ids restart with a fresh database while Prefect's result store does not. Every task rides out
infrastructure outages for a bounded time (``prefect_adapter.outages``); provider retries happen
inside the step (``executor.run_step``), so Prefect-level retries would only repeat a decision
already made.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from parley.conversation import executor, handshake
from parley.conversation.state_machine import Cursor
from prefect_adapter import resume_form
from prefect_adapter.artifacts import publish_conversation_artifact
from prefect_adapter.composition import get_runtime
from prefect_adapter.outages import riding_out_outages


def step_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    run = context.task_run.flow_run_id
    return f"conv:{parameters['conversation_id']}:step:{parameters['step']}:run:{run}"


@task(name="begin-run", cache_policy=NO_CACHE)
async def begin_run(conversation_id: int, flow_run_id: str | None) -> Cursor:
    rt = await get_runtime()
    return await riding_out_outages(
        lambda: executor.begin_run(rt, conversation_id, flow_run_id), f"begin {conversation_id}"
    )


@task(
    name="step",
    task_run_name="step-{step} {node}",
    cache_key_fn=step_cache_key,
    persist_result=True,
)
async def advance_step(conversation_id: int, step: int, node: str) -> Cursor:
    """``node`` only names the task run after the campaign node (the cache key ignores it)."""
    rt = await get_runtime()
    return await riding_out_outages(
        lambda: executor.run_step(rt, conversation_id, step), f"step {conversation_id}/{step}"
    )


@task(name="wait-for-reply", cache_policy=NO_CACHE, task_run_name="wait-for-reply-{step}")
async def wait_for_reply(conversation_id: int, step: int, seconds: float) -> bool:
    rt = await get_runtime()
    return await riding_out_outages(
        lambda: handshake.wait_hot(rt, conversation_id, step, seconds),
        f"hot wait {conversation_id}/{step}",
    )


@task(name="prepare-suspend", cache_policy=NO_CACHE, task_run_name="prepare-suspend-{step}")
async def prepare_suspend(conversation_id: int, step: int) -> handshake.SuspendDecision:
    """When the run is to suspend, its page in the Prefect UI (the markdown artifact) is
    brought up to date first; a failure there is only a warning, never the run's failure."""
    rt = await get_runtime()
    decision = await riding_out_outages(
        lambda: handshake.prepare_suspend(rt, conversation_id, step),
        f"prepare suspend {conversation_id}/{step}",
    )
    if decision.suspend:
        try:
            await publish_conversation_artifact(conversation_id)
        except Exception as exc:
            get_run_logger().warning(
                "conversation %s: artifact not updated (%r)", conversation_id, exc
            )
    return decision


@task(name="take-task-answers", cache_policy=NO_CACHE)
async def take_task_answers(conversation_id: int, flow_run_id: str) -> int:
    """A run resumed at an open task first applies a result given in the Resume dialog."""
    return await riding_out_outages(
        lambda: resume_form.apply_task_answers(conversation_id, flow_run_id),
        f"task answers {conversation_id}",
    )


@task(name="give-up", task_run_name="give-up-{step}", cache_policy=NO_CACHE)
async def give_up_step(conversation_id: int, step: int, reason: str) -> Cursor:
    """A step failed for good: take its error edge, or apologise and end ``failed``."""
    rt = await get_runtime()
    return await riding_out_outages(
        lambda: executor.give_up(rt, conversation_id, step, reason),
        f"give up {conversation_id}/{step}",
    )
