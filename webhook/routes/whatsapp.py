"""Meta's WhatsApp webhooks: the subscription check and the signed event POSTs.

Thin on purpose: verify, parse, store durably (``parley.conversation.inbox``), answer 200, and only
then try to wake the flow run (``prefect_adapter.runs.wake``); the dispatcher finishes any wake-up
that failed.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from webhook.deps import (
    CampaignNameDep,
    RuntimeDep,
    SettingsDep,
    WhatsAppDep,
    read_signed,
    store_and_wake,
)

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
    rt: RuntimeDep,
    channel: WhatsAppDep,
    campaign_name: CampaignNameDep,
) -> dict[str, Any]:
    batch = read_signed(await request.body(), request.headers, channel.verify, channel.parse)
    result = await store_and_wake(rt, settings, background, batch, campaign_name)
    return {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "statuses": result.statuses,
        "ignored": result.ignored,
    }
