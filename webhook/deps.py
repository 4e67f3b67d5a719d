"""What routes share: settings, the database, the channels, and the operator API key check.

Everything lives on ``app.state`` (built once in the lifespan) and reaches routes as
``Annotated`` dependencies, so a route reads like what it does.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from parley.channels.base import Channel
from parley.db import Database
from parley.settings import Settings


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def _campaign_name(request: Request) -> str:
    return request.app.state.campaign_name  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
DbDep = Annotated[Database, Depends(_db)]
CampaignNameDep = Annotated[str, Depends(_campaign_name)]


def _whatsapp(request: Request) -> Channel:
    return request.app.state.channels["whatsapp"]  # type: ignore[no-any-return]


WhatsAppDep = Annotated[Channel, Depends(_whatsapp)]


_bearer = HTTPBearer(auto_error=False)
UNAUTHORIZED = "a valid API key is required: Authorization: Bearer <key from PARLEY_API_KEYS>"


def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Operator endpoints show phone numbers and transcripts: no key, no data. Every configured
    key is compared in constant time, so the answer's timing says nothing about a guess."""
    offered = credentials.credentials.encode() if credentials else b""
    matches = [hmac.compare_digest(offered, key.encode()) for key in settings.api_key_list]
    if not credentials or not any(matches):
        raise HTTPException(
            status_code=401, detail=UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}
        )


ApiKey = Depends(require_api_key)
