"""FastAPI app ``webhook.app:app``: WhatsApp webhooks, the operators' REST API, health.

Routes stay thin: verify, parse, store durably (``parley.inbox``), answer 200, and only then
try to wake the flow run (``webhook.wakeups``); the sweep finishes any wake-up that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from parley import inbox, report
from parley.campaign.registry import install_campaign
from parley.channels.whatsapp_webhook import parse_webhook, verify_signature
from parley.db import Database
from parley.errors import InvalidSignature, MalformedPayload, NotFound
from parley.settings import Settings, get_settings
from webhook.sweep import sweep_forever
from webhook.wakeups import wake

log = logging.getLogger("parley.webhook")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    db = Database(settings.resolved_database_url)
    async with db.transaction() as session:
        version = await install_campaign(session, settings.default_campaign)
    app.state.settings = settings
    app.state.db = db
    app.state.campaign_name = version.name
    sweeper = asyncio.create_task(sweep_forever(db, settings))
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await db.dispose()


app = FastAPI(title="Parley webhook", lifespan=lifespan)


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
DbDep = Annotated[Database, Depends(_db)]


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/webhooks/whatsapp", response_class=PlainTextResponse)
async def verify_subscription(
    settings: SettingsDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str, Query(alias="hub.challenge")] = "",
) -> str:
    if mode != "subscribe" or token != settings.whatsapp_verify_token:
        raise HTTPException(status_code=403, detail="verification token mismatch")
    return challenge


@app.post("/webhooks/whatsapp")
async def receive_whatsapp(
    request: Request, background: BackgroundTasks, settings: SettingsDep, db: DbDep
) -> dict[str, Any]:
    raw = await request.body()
    try:
        verify_signature(
            raw, request.headers.get("x-hub-signature-256"), settings.whatsapp_app_secret
        )
        batch = parse_webhook(raw)
    except InvalidSignature as exc:
        raise HTTPException(status_code=401, detail=str(exc)) from exc
    except MalformedPayload as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    result = await inbox.store_batch(db, batch, request.app.state.campaign_name)
    for wakeup in result.wakeups:
        background.add_task(wake, db, settings, wakeup)
    return {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "statuses": result.statuses,
        "ignored": result.ignored,
    }


@app.get("/api/conversations")
async def api_list_conversations(
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: str | None = None,
) -> list[dict[str, Any]]:
    return await report.list_conversations(db, limit=limit, status=status)


@app.get("/api/conversations/{conversation_id}")
async def api_show_conversation(conversation_id: int, db: DbDep) -> dict[str, Any]:
    try:
        return await report.show_conversation(db, conversation_id)
    except NotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
