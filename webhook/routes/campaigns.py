"""The operators' REST API for campaigns: publish a campaign, list and show them, read a
version's exact text, the funnel, and migrating waiting conversations to another version. The
same JSON as ``parley campaign publish|list|show|funnel|migrate --json``.

Included before ``webhook.routes.api``: its ``POST /api/campaigns/{name}/{command}`` (pause,
resume, activate, archive) would otherwise claim ``/migrate`` and answer 422.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from parley.campaign import publishing
from parley.conversation import funnel, lifecycle, migration
from parley.conversation.migration import MigrationRefused
from parley.errors import CampaignInvalid, InvalidInput, NotFound
from prefect_adapter.composition import publish_installation
from webhook.deps import ApiKey, DbDep, SettingsDep, refusing

router = APIRouter(prefix="/api", tags=["campaigns"], dependencies=[ApiKey])


@router.post("/campaigns", response_model=None)
async def publish_campaign(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    activate: Annotated[bool, Query(description="Activate it at once (else: a draft).")] = False,
) -> JSONResponse:
    """The body is the campaign as YAML (or JSON, which is YAML too). 201 with name, version,
    digest, status and warnings when stored as a new version; 200 when this content was
    published before; 422 with every problem by node id (the graph's own, and what this
    installation lacks: a channel for an action, a Prefect Secret block). A new campaign is a
    draft unless ``?activate=true``."""
    try:
        source = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(status_code=422, detail="the body is not UTF-8 text") from exc
    try:
        published = await publishing.publish(
            db, source, origin="the request body", installation=publish_installation(settings)
        )
    except CampaignInvalid as exc:
        problems = [{"node": node, "message": message} for node, message in exc.problems]
        return JSONResponse({"detail": "invalid campaign", "problems": problems}, 422)
    if activate:
        change = await refusing(lifecycle.activate_campaign(db, published.name))
        published = dataclasses.replace(published, status=change.status)
    return JSONResponse(published.as_dict(), status_code=201 if published.created else 200)


@router.get("/campaigns")
async def list_campaigns(db: DbDep) -> list[dict[str, Any]]:
    return [c.as_dict() for c in await publishing.list_campaigns(db)]


@router.get("/campaigns/{name}")
async def show_campaign(
    name: str, db: DbDep, version: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    """One version (default: the newest): its nodes and every version of the campaign."""
    try:
        return await publishing.show_campaign(db, name, version)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@router.get("/campaigns/{name}/versions/{version}", response_class=PlainTextResponse)
async def campaign_version_source(name: str, version: int, db: DbDep) -> PlainTextResponse:
    """The exact text published as that version (``application/yaml``)."""
    try:
        source = await publishing.campaign_source(db, name, version)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    return PlainTextResponse(source, media_type="application/yaml")


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
