"""The operators' REST API: the same JSON as the CLI, behind an API key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from parley import operator_views
from parley.errors import NotFound
from parley.state_machine import Status
from webhook.deps import ApiKey, DbDep

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
    try:
        return await operator_views.show_conversation(db, conversation_id)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
