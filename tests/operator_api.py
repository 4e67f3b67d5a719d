"""An in-process client for operator routes: the routers under test on a bare FastAPI app with
the database and an API key, spoken to over ASGI (no lifespan, no Prefect)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI

from parley.db import Database
from parley.settings import Settings

API_KEY = "test-operator-key"


def operator_api(
    db: Database,
    *routers: APIRouter,
    api_key: str = API_KEY,
    settings: Settings | None = None,
    overrides: Mapping[Callable[..., Any], Callable[..., Any]] | None = None,
) -> httpx.AsyncClient:
    """``overrides``: FastAPI dependency overrides (a route's runtime: the test's own)."""
    application = FastAPI()
    for router in routers:
        application.include_router(router)
    application.dependency_overrides.update(overrides or {})
    application.state.db = db
    application.state.settings = settings or Settings(api_keys=api_key)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application),
        base_url="http://parley",
        headers={"Authorization": f"Bearer {api_key}"},
    )
