"""What a suspended conversation run accepts when it is resumed.

Every resume hands over a small ``ResumeInput`` (why the run was woken); the message, task
result or signal itself is in Parley's database, so run inputs never grow with the transcript.
A run suspended at a ``task`` node offers more: the task's result form, generated from the node
(its outcomes as a choice, its typed fields, its title and description), so a person can
complete the task from the Prefect UI's Resume dialog. The run reads that form's answer when it
starts again and applies it exactly like ``parley conversations task`` would.
"""

from __future__ import annotations

import logging
from typing import Any, Literal
from uuid import UUID

from prefect.input import RunInput
from prefect.input.actions import adelete_flow_run_input
from pydantic import Field, create_model

from parley.campaign import TaskNode
from parley.conversation import lifecycle
from parley.db import queries
from parley.errors import InvalidInput, TransitionNotAllowed
from prefect_adapter.client import prefect_api
from prefect_adapter.composition import get_runtime

log = logging.getLogger(__name__)

RESPONSE_PREFIX = "suspended-wait-"
"""Prefect keeps a paused run's answer under ``suspended-{pause key}-response``."""


class ResumeInput(RunInput):
    """Why the run was woken."""

    reason: Literal["message", "timer", "operator", "signal", "sweep", "action"] = "message"
    conversation_id: int | None = None


async def resume_form(conversation_id: int) -> type[RunInput]:
    """The input model to suspend with: the task's form at an open task, else ``ResumeInput``."""
    rt = await get_runtime()
    async with rt.db.read() as session:
        row = await queries.conversations.get_conversation(session, conversation_id)
        campaign = await rt.campaigns.get(session, row.campaign_version_id)
    node = campaign.node(row.current_node)
    if not isinstance(node, TaskNode) or not row.node_done or row.task_result is not None:
        return ResumeInput
    return _task_form(row.campaign_version_id, node)


_forms: dict[tuple[int, str], type[RunInput]] = {}


def _task_form(version_id: int, node: TaskNode) -> type[RunInput]:
    """Versions are immutable, so a form is built once per (version, node)."""
    key = (version_id, node.id)
    if key not in _forms:
        _forms[key] = _build_task_form(node)
    return _forms[key]


def _build_task_form(node: TaskNode) -> type[RunInput]:
    result = node.result_model()
    fields: dict[str, Any] = {
        name: (info.annotation | None, Field(default=None, description=info.description))  # type: ignore[operator]
        for name, info in result.model_fields.items()
    }
    title = "".join(part.capitalize() for part in node.id.replace("-", "_").split("_"))
    form: type[RunInput] = create_model(
        f"{title}Form", __base__=ResumeInput, __doc__=node.title, **fields
    )
    description = f"**Task: {node.title}**\n\n{node.description or ''}\n\n" + (
        f"Choose an outcome ({', '.join(node.outcomes)}) to complete it; "
        "resume without one just lets the run look again."
    )
    return form.with_initial_data(description=description)


async def apply_task_answers(conversation_id: int, flow_run_id: str) -> int:
    """Task results given in the Prefect UI's Resume dialog: applied through the lifecycle (the
    node's model validates them), then deleted so none is applied twice. A refused one (the
    task was completed another way meanwhile) is logged and dropped."""
    applied = 0
    async with prefect_api() as client:
        inputs = await client.filter_flow_run_input(
            flow_run_id=UUID(flow_run_id), key_prefix=RESPONSE_PREFIX, limit=20, exclude_keys=set()
        )
    rt = await get_runtime()
    for found in inputs:
        if not found.key.endswith("-response"):
            continue
        answer = {
            key: value
            for key, value in dict(found.decoded_value or {}).items()
            if key not in ("reason", "conversation_id") and value is not None
        }
        if answer.get("outcome"):
            try:
                await lifecycle.complete_task(rt.db, conversation_id, answer)
                applied += 1
            except (TransitionNotAllowed, InvalidInput) as exc:
                log.warning("task answer from the Prefect UI not applied: %s", exc)
        await adelete_flow_run_input(found.key, flow_run_id=UUID(flow_run_id))
    return applied
