"""The operators' REST API for lead imports: ``POST /api/conversations/bulk`` checks and
stores the rows, answers 202 with the import's id and creates the conversations in the
background; ``GET /api/imports/{id}`` reads its progress and report (the same JSON as
``parley leads show --json``).

Included before ``webhook.routes.api``: its ``/api/conversations/{conversation_id}`` routes
would otherwise take ``bulk`` for an id.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from parley.conversation import lead_import
from parley.conversation.lead_rows import parse_text
from parley.db import Database
from parley.errors import InvalidInput
from webhook.deps import ApiKey, DbDep, refusing

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api", tags=["lead imports"], dependencies=[ApiKey])

BULK_PATH = "/api/conversations/bulk"
FORMAT_OF = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
}
_importing: set[asyncio.Task[dict[str, int]]] = set()


@router.post(BULK_PATH.removeprefix("/api"), status_code=202, response_model=None)
async def import_leads(
    request: Request,
    db: DbDep,
    campaign: Annotated[str | None, Query(description="with a CSV or JSONL body")] = None,
    identity_id: Annotated[int | None, Query(description="with a CSV or JSONL body")] = None,
) -> JSONResponse:
    """Leads in bulk: a JSON body ``{"campaign", "identity_id", "rows": [...]}``, or the file
    itself (``Content-Type: text/csv`` or ``application/x-ndjson``) with ``?campaign=&
    identity_id=``. Every row is checked before anything is created; 202 with the import's id
    (its rows' outcomes are read at ``GET /api/imports/{id}``); 404 unknown campaign or
    identity, 422 a body that is not rows."""
    campaign, identity_id, rows = await _rows_of(request, campaign, identity_id)
    prepared = await refusing(
        lead_import.prepare(db, campaign, identity_id, rows, source="POST /api/conversations/bulk")
    )
    _in_background(db, prepared.import_id)
    return JSONResponse(
        {
            "import_id": prepared.import_id,
            "total": prepared.total,
            "resumed": prepared.resumed,
            "progress": f"/api/imports/{prepared.import_id}",
        },
        status_code=202,
    )


async def _rows_of(
    request: Request, campaign: str | None, identity_id: int | None
) -> tuple[str, int, list[dict[str, Any]]]:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        text = (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPException(status_code=422, detail="the body is not UTF-8 text") from exc
    if content_type in FORMAT_OF:
        if campaign is None or identity_id is None:
            raise HTTPException(422, "a CSV or JSONL body needs ?campaign=...&identity_id=...")
        try:
            return campaign, identity_id, parse_text(text, FORMAT_OF[content_type])
        except InvalidInput as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc
    return _json_body(text)


def _json_body(text: str) -> tuple[str, int, list[dict[str, Any]]]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"the body is not JSON ({exc.msg})") from exc
    shape = "expected {campaign, identity_id, rows: [objects]}"
    if not isinstance(body, dict):
        raise HTTPException(422, shape)
    campaign, identity_id, rows = body.get("campaign"), body.get("identity_id"), body.get("rows")
    if (
        not isinstance(campaign, str)
        or not isinstance(identity_id, int)
        or not isinstance(rows, list)
        or not all(isinstance(row, dict) for row in rows)
    ):
        raise HTTPException(422, shape)
    return campaign, identity_id, rows


def _in_background(db: Database, import_id: int) -> None:
    """The batches after the answer; if this process dies meanwhile, posting the same rows
    again finishes the import (its open rows are stored)."""
    task = asyncio.create_task(lead_import.run(db, import_id))
    _importing.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Task[dict[str, int]]) -> None:
    _importing.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("a lead import stopped (%r); post the same rows again to finish it", error)


@router.get("/imports/{import_id}")
async def import_progress(
    import_id: int, db: DbDep, rows: Annotated[bool, Query(description="the report")] = True
) -> dict[str, Any]:
    """Rows per outcome (``pending``: not done yet), runs started, and the report by row."""
    return await refusing(lead_import.progress(db, import_id, with_rows=rows))
