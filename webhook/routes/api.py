"""The operators' REST API: the same JSON as the CLI, behind an API key.

Changes go through ``parley.conversation.lifecycle`` like the CLI's; the run a change owes a
resume (or a start) gets it right after the commit, and the dispatcher finishes what Prefect
did not take.
Refusals are HTTP errors with the reason: 404 unknown, 409 not allowed now, 422 invalid input.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field

from parley.conversation import lifecycle, operator_views
from parley.conversation.lifecycle import CampaignChange, Change
from parley.vocabulary import Status
from prefect_adapter.runs import carry_out
from webhook.deps import ApiKey, DbDep, SettingsDep, refusing

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["operators"], dependencies=[ApiKey])


@router.get("/conversations")
async def list_conversations(
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Status | None = None,
) -> list[dict[str, Any]]:
    return await operator_views.list_conversations(db, limit=limit, status=status)


@router.get("/conversations/{conversation_id}")
async def show_conversation(conversation_id: int, db: DbDep) -> dict[str, Any]:
    return await refusing(operator_views.show_conversation(db, conversation_id))


class ChangeOut(BaseModel):
    id: int
    status: Status
    run: Literal["resume", "start", "end", "none"]
    run_reached: bool = Field(description="False: the dispatcher will do it within a tick.")
    detail: str


_carrying_out: set[asyncio.Task[bool]] = set()


async def _applied(change: Change, db: DbDep, settings: SettingsDep) -> ChangeOut:
    reached = True if change.run == "none" else await _carried_out(db, settings, change)
    return ChangeOut(
        id=change.conversation_id,
        status=change.status,
        run=change.run,
        run_reached=reached,
        detail=change.detail,
    )


async def _carried_out(db: DbDep, settings: SettingsDep, change: Change) -> bool:
    """The run's start or resume, waited for at most ``api_run_wait_seconds``: a Prefect that
    answers slowly (503s it retries) must not hold the operator's call past its timeout. The
    work goes on in the background; if it fails there the dispatcher does it."""
    task = asyncio.create_task(carry_out(db, settings, change))
    _carrying_out.add(task)
    task.add_done_callback(_finished)
    try:
        return await asyncio.wait_for(asyncio.shield(task), settings.api_run_wait_seconds)
    except TimeoutError:
        return False


def _finished(task: asyncio.Task[bool]) -> None:
    """A start or resume that failed after the call was answered is logged, not lost: the
    dispatcher finds the row's owed run within a tick."""
    _carrying_out.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("carrying out an operator's change failed (%r); the dispatcher will", error)


class StartIn(BaseModel):
    campaign: str = Field(description="the campaign's name; its latest version is used")
    identity_id: int = Field(description="the sender identity")
    channel: str = Field(default="linkedin", description="the lead's channel")
    address: str = Field(description="the lead's address on that channel (a profile URL, ...)")
    name: str | None = None
    fields: dict[str, Any] = Field(
        default_factory=dict, description="contact fields the actions need: email, linkedin"
    )
    variables: dict[str, Any] = Field(
        default_factory=dict, description="the campaign's inputs, e.g. first_name"
    )


@router.post("/conversations", status_code=201)
async def start_conversation(body: StartIn, db: DbDep, settings: SettingsDep) -> ChangeOut:
    """Start a business-initiated conversation (an outreach lead); its run starts at once.
    404 unknown identity or campaign, 409 the contact already has an active conversation
    there, 422 missing inputs."""
    change = await refusing(
        lifecycle.start(
            db,
            body.campaign,
            body.identity_id,
            channel=body.channel,
            address=body.address,
            name=body.name,
            fields=body.fields,
            variables=body.variables,
        )
    )
    return await _applied(change, db, settings)


class SignalIn(BaseModel):
    kind: str = Field(description="task_completed, field_changed or variables_changed")
    data: dict[str, Any] = Field(default_factory=dict)


@router.post("/conversations/{conversation_id}/signals")
async def signal_conversation(
    conversation_id: int, signal: SignalIn, db: DbDep, settings: SettingsDep
) -> ChangeOut:
    change = await refusing(lifecycle.signal(db, conversation_id, signal.kind, signal.data))
    return await _applied(change, db, settings)


@router.post("/conversations/{conversation_id}/task")
async def complete_task(
    conversation_id: int,
    result: Annotated[dict[str, Any], Body(examples=[{"outcome": "reached", "notes": "..."}])],
    db: DbDep,
    settings: SettingsDep,
) -> ChangeOut:
    """Complete the open task with a result the task node's model accepts."""
    change = await refusing(lifecycle.complete_task(db, conversation_id, result))
    return await _applied(change, db, settings)


Command = Literal["pause", "resume", "cancel", "complete", "retry"]


class ReasonIn(BaseModel):
    reason: str | None = None


# Last: the literal paths above (signals, task) must not be read as a command.
@router.post("/conversations/{conversation_id}/{command}")
async def change_conversation(
    conversation_id: int,
    command: Command,
    db: DbDep,
    settings: SettingsDep,
    body: Annotated[ReasonIn | None, Body()] = None,
) -> ChangeOut:
    """pause, resume, cancel, complete or retry one conversation."""
    reason = (body.reason if body else None) or f"{command} by an operator"
    actions = {
        "pause": lambda: lifecycle.pause(db, conversation_id),
        "resume": lambda: lifecycle.resume(db, conversation_id),
        "cancel": lambda: lifecycle.cancel(db, conversation_id, reason),
        "complete": lambda: lifecycle.complete(db, conversation_id, reason),
        "retry": lambda: lifecycle.retry(db, conversation_id),
    }
    change = await refusing(actions[command]())
    return await _applied(change, db, settings)


class CampaignChangeOut(BaseModel):
    name: str
    status: str
    paused: bool
    conversations: list[ChangeOut]


@router.post("/campaigns/{name}/{command}")
async def change_campaign(
    name: str,
    command: Literal["pause", "resume", "activate", "archive"],
    db: DbDep,
    settings: SettingsDep,
    body: Annotated[ReasonIn | None, Body()] = None,
) -> CampaignChangeOut:
    """Pause (every conversation stops at its next node), resume, activate (a draft's
    conversations waiting at its gate go) or archive (no new conversations; running ones
    finish) a campaign. 409 when its status does not allow the move."""
    reason = body.reason if body else None
    actions: dict[str, Callable[[], Awaitable[CampaignChange]]] = {
        "pause": lambda: lifecycle.pause_campaign(db, name, reason),
        "resume": lambda: lifecycle.resume_campaign(db, name),
        "activate": lambda: lifecycle.activate_campaign(db, name),
        "archive": lambda: lifecycle.archive_campaign(db, name, reason),
    }
    change = await refusing(actions[command]())
    outs = [await _applied(c, db, settings) for c in change.changes]
    return CampaignChangeOut(
        name=change.name, status=change.status.value, paused=change.paused, conversations=outs
    )
