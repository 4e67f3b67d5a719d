"""``POST /api/conversations/{id}/send``: an operator's message, through the identity's
decision (the same as ``parley send``): 200 with ``sent: true``, or 409 with the reason."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from parley.errors import InvalidInput, NotFound, TransitionNotAllowed
from parley.outreach import dispatch
from webhook.deps import ApiKey, RuntimeDep

router = APIRouter(prefix="/api", tags=["operators"], dependencies=[ApiKey])


class ManualSendIn(BaseModel):
    text: str = Field(min_length=1)
    type: str | None = Field(default=None, description="e.g. linkedin_message, email")
    subject: str | None = None


class ManualSendOut(BaseModel):
    sent: bool
    reason: str
    action_id: int | None


@router.post("/conversations/{conversation_id}/send")
async def manual_send(
    conversation_id: int,
    body: ManualSendIn,
    rt: RuntimeDep,
) -> ManualSendOut:
    try:
        result = await dispatch.manual_send(
            rt, conversation_id, body.text, action_type=body.type, subject=body.subject
        )
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except TransitionNotAllowed as exc:
        raise HTTPException(409, str(exc)) from exc
    except InvalidInput as exc:
        raise HTTPException(422, str(exc)) from exc
    if not result.sent:
        raise HTTPException(409, f"not sent: {result.reason}")
    return ManualSendOut(sent=True, reason=result.reason, action_id=result.action_id)
