"""The operators' REST API for sender identities: the same JSON as ``parley identity ... --json``.

``GET /api/identities/{id}`` is the explanation of the identity's queue (why it is not moving
and when it will), read on the same clock the dispatcher records sends on. Refusals: 404 unknown
identity, 409 duplicate channel and address, 422 invalid input or policy.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from parley.clock import clock_from
from parley.outreach import identities
from prefect_adapter.concurrency_slots import ensure_identity_limit
from webhook.deps import ApiKey, DbDep, SettingsDep, refusing

log = logging.getLogger(__name__)
LIMIT_CREATE_SECONDS = 5.0

router = APIRouter(prefix="/api", tags=["identities"], dependencies=[ApiKey])


class IdentityIn(BaseModel):
    channel: str = Field(description="email, linkedin or whatsapp")
    address: str = Field(description="the mailbox, the LinkedIn seat's id, the WhatsApp number")
    name: str | None = None
    timezone: str | None = Field(default=None, description="IANA name; default UTC")
    policy: dict[str, Any] | None = Field(
        default=None, description="{working_hours: {...}, limits: {...}}; defaults when left out"
    )
    settings: dict[str, Any] | None = Field(default=None, description="provider settings")


class IdentityPatch(BaseModel):
    name: str | None = Field(default=None, description="'' clears it")
    timezone: str | None = None
    policy: dict[str, Any] | None = Field(default=None, description="replaces the policy")
    settings: dict[str, Any] | None = Field(
        default=None,
        description="merged key by key; a null value removes the key; changing where a secret "
        "is sent (gateway_url, smtp_host, ...) needs the secret again",
    )
    clear_flag: bool = False


class ReconnectIn(BaseModel):
    channel: str = Field(
        description="the parked queue as `identity show` names it: linkedin, whatsapp, "
        "credits, email-{mailbox} (or email: the identity's mailbox)"
    )


@router.get("/identities")
async def list_identities(db: DbDep) -> list[dict[str, Any]]:
    return await identities.list_identities(db)


@router.post("/identities", status_code=201)
async def add_identity(body: IdentityIn, db: DbDep) -> dict[str, Any]:
    """The identity's concurrency limit is created with it, so the Concurrency page shows it
    before its first action; with Prefect away, the dispatcher creates it when it first meets
    the identity (it never acts without one)."""
    added: dict[str, Any] = await refusing(
        identities.add_identity(
            db,
            body.channel,
            body.address,
            name=body.name,
            timezone=body.timezone,
            policy=body.policy,
            settings=body.settings,
        )
    )
    try:
        async with asyncio.timeout(LIMIT_CREATE_SECONDS):
            await ensure_identity_limit(int(added["id"]))
    except Exception as exc:  # Prefect may be away; the dispatcher creates it then
        log.warning("identity %s: concurrency limit not created yet: %r", added["id"], exc)
    return added


@router.get("/identities/{identity_id}")
async def show_identity(identity_id: int, db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """The identity, its parked queues, usage against its caps, its next action, and
    ``status.sentence``: why its queue is not moving and when it will."""
    clock = clock_from(settings.clock_file)
    return await refusing(identities.explain(db, identity_id, clock=clock))


@router.patch("/identities/{identity_id}")
async def update_identity(
    identity_id: int, body: IdentityPatch, db: DbDep, settings: SettingsDep
) -> dict[str, Any]:
    """A new policy or timezone takes effect now: the actions put off under the old one are
    decided again on the dispatcher's clock."""
    return await refusing(
        identities.update_identity(
            db,
            identity_id,
            name=body.name,
            timezone=body.timezone,
            policy=body.policy,
            settings=body.settings,
            clear_flag=body.clear_flag,
            clock=clock_from(settings.clock_file),
        )
    )


@router.post("/identities/{identity_id}/reconnect")
async def reconnect_identity(identity_id: int, body: ReconnectIn, db: DbDep) -> dict[str, Any]:
    """Release a parked channel: its actions go back to the ready queue in their order."""
    moved = await refusing(identities.reconnect(db, identity_id, body.channel))
    return {"id": identity_id, "channel": body.channel, "unparked": moved}
