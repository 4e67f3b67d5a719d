"""The operators' REST API for campaign versions: the funnel, and migrating waiting
conversations to another version. The same JSON as ``parley campaign funnel|migrate --json``.

Included before ``webhook.routes.api``: its ``POST /api/campaigns/{name}/{command}`` (pause,
resume) would otherwise claim ``/migrate`` and answer 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from parley.conversation import funnel, migration
from parley.conversation.migration import MigrationRefused
from parley.errors import InvalidInput, NotFound
from webhook.deps import ApiKey, DbDep

router = APIRouter(prefix="/api", tags=["campaigns"], dependencies=[ApiKey])


@router.get("/campaigns/{name}/funnel")
async def campaign_funnel(
    name: str, db: DbDep, version: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    """Per node of the version (default: the latest): reached, waiting now, dropped off,
    completed, p50/p95 seconds spent there."""
    try:
        result = await funnel.campaign_funnel(db, name, version)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return result.as_dict()


class MigrateIn(BaseModel):
    to: int = Field(ge=1, description="The version to move the waiting conversations to.")
    map: dict[str, str] = Field(
        default_factory=dict, description="old node id -> node id in the target version"
    )


@router.post("/campaigns/{name}/migrate", response_model=None)
async def migrate_campaign(name: str, body: MigrateIn, db: DbDep) -> dict[str, Any] | JSONResponse:
    """Move the campaign's waiting conversations to version ``to``. 409 with every
    conversation whose node has no mapping when refused (nothing was changed)."""
    try:
        result = await migration.migrate(db, name, body.to, body.map)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except MigrationRefused as refused:
        return JSONResponse({"detail": str(refused), **refused.as_dict()}, status_code=409)
    except InvalidInput as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    return result.as_dict()
