"""The operators' REST API for the do-not-contact list: the same JSON as ``parley suppress
... --json``. Refusals: 404 unknown identity or entry, 422 an address that is none of email,
phone, LinkedIn profile, or an unknown reason."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field

from parley import suppression
from parley.vocabulary import SuppressionReason
from webhook.deps import ApiKey, DbDep, refusing

router = APIRouter(prefix="/api", tags=["suppressions"], dependencies=[ApiKey])


class SuppressionIn(BaseModel):
    address: str = Field(description="an email address, a phone number or a LinkedIn URL")
    reason: SuppressionReason = "manual"
    identity_id: int | None = Field(default=None, description="null: installation-wide")
    note: str | None = None


@router.post("/suppressions", status_code=201)
async def add_suppression(body: SuppressionIn, db: DbDep, response: Response) -> dict[str, Any]:
    """201 with the new entry; 200 with the existing one when the address was already there."""
    entry, created = await refusing(
        suppression.suppress(
            db, body.address, body.reason, identity_id=body.identity_id, note=body.note, by="api"
        )
    )
    if not created:
        response.status_code = 200
    return {**entry, "created": created}


@router.delete("/suppressions")
async def remove_suppression(
    db: DbDep,
    address: Annotated[str, Query(description="as it was added, any spelling")],
    identity_id: Annotated[int | None, Query(description="omit: installation-wide")] = None,
) -> dict[str, Any]:
    removed = await refusing(suppression.unsuppress(db, address, identity_id=identity_id))
    return {"address": removed.address, "kind": removed.kind, "identity_id": identity_id}


@router.get("/suppressions")
async def list_suppressions(
    db: DbDep,
    identity_id: Annotated[
        int | None, Query(description="what applies to it: its own and installation-wide")
    ] = None,
) -> list[dict[str, Any]]:
    return await suppression.listing(db, identity_id)


@router.post("/suppressions/import")
async def import_suppressions(db: DbDep, request: Request) -> dict[str, Any]:
    """The body is the CSV (``text/csv``; columns address,reason,identity,note). A report per
    row (``added``, ``already suppressed``, ``invalid: why``): a bad row does not stop the
    others. 422 for a body that is not UTF-8 or a CSV without an address column."""
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(status_code=422, detail=f"the CSV is not UTF-8: {exc}") from exc
    report = await refusing(suppression.import_csv(db, text, by="api"))
    return {
        "rows": [row.__dict__ for row in report],
        "added": sum(row.result == suppression.ADDED for row in report),
        "invalid": sum(row.invalid for row in report),
    }
