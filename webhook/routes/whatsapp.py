"""Meta's WhatsApp webhooks: the subscription check and the signed event POSTs.

Thin on purpose: verify, parse, store durably (``parley.inbox``), answer 200, and only then try
to wake the flow run (``tasks.runs.wake``); the dispatcher finishes any wake-up that failed.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from parley import inbox
from parley.errors import InvalidSignature, MalformedPayload
from tasks.runs import wake
from webhook.deps import CampaignNameDep, DbDep, SettingsDep, WhatsAppDep

router = APIRouter(prefix="/webhooks/whatsapp", tags=["whatsapp"])


@router.get("", response_class=PlainTextResponse)
async def verify_subscription(
    settings: SettingsDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str, Query(alias="hub.challenge")] = "",
) -> str:
    expected = settings.whatsapp_verify_token.get_secret_value().encode()
    if mode != "subscribe" or not hmac.compare_digest((token or "").encode(), expected):
        raise HTTPException(status_code=403, detail="verification token mismatch")
    return challenge


@router.post("")
async def receive(
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    db: DbDep,
    channel: WhatsAppDep,
    campaign_name: CampaignNameDep,
) -> dict[str, Any]:
    raw = await request.body()
    try:
        channel.verify(raw, request.headers)
        batch = channel.parse(raw)
    except InvalidSignature as exc:
        raise HTTPException(status_code=401, detail=str(exc)) from exc
    except MalformedPayload as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    result = await inbox.store_batch(db, batch, campaign_name)
    for wakeup in result.wakeups:
        background.add_task(wake, db, settings, wakeup)
    return {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "statuses": result.statuses,
        "ignored": result.ignored,
    }
