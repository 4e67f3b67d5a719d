"""FastAPI app ``webhook.app:app``: provider webhooks, the operators' REST API, health.

The lifespan builds what routes share once (settings, database, channels, the default campaign
installed as a version) with the composition root every Parley process uses
(``prefect_adapter.composition``); routes live in ``webhook.routes``, one module per provider.

The webhook's whole point is to keep storing while Prefect is away, so it starts without it:
nothing at startup needs Prefect except, possibly, the database URL (the ``parley-db`` block),
and when that cannot be read yet the process stays up, answers 503 with Retry-After (providers
deliver again) and keeps trying — it never exits for a process manager to restart in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from parley.campaign.registry import install_campaign
from parley.db import queries
from parley.errors import ConfigurationError, NotFound
from parley.settings import Settings
from prefect_adapter.client import close_prefect_api
from prefect_adapter.composition import (
    DatabaseUrlUnknown,
    get_settings,
    open_database,
    webhook_channels,
)
from webhook.deps import StorageNotReady
from webhook.routes import (
    api,
    campaigns,
    email,
    identities,
    lead_imports,
    linkedin,
    sending,
    suppressions,
    whatsapp,
)

log = logging.getLogger("parley.webhook")


def _configure_logging() -> None:
    """uvicorn configures its own loggers only; Parley's (resumes, give-ups) go to stderr."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


STORAGE_RETRY_SECONDS = 5.0


async def _open_storage(app: FastAPI, settings: Settings) -> None:
    """The database and the default campaign; on ``app.state`` only once both are there."""
    # The same database as the worker's: the parley-db block first, then the settings.
    db = await open_database(settings)
    try:
        async with db.transaction() as session:
            name = await default_campaign_name(session, settings)
    except BaseException:
        await db.dispose()
        raise
    app.state.campaign_name = name
    app.state.db = db


async def default_campaign_name(session: AsyncSession, settings: Settings) -> str:
    """The campaign new inbound contacts get: a file (the embedded demo) is published and
    activated here, as it always was; a name must be published already (``parley campaign
    publish``), else ``ConfigurationError`` says so at startup, not at the first message."""
    path = settings.default_campaign_file
    if path is not None:
        return (await install_campaign(session, path)).name
    try:
        version = await queries.campaigns.latest_campaign_version(
            session, settings.default_campaign
        )
    except NotFound:
        raise ConfigurationError(
            f"PARLEY_DEFAULT_CAMPAIGN={settings.default_campaign!r} is not a published campaign "
            "(nor a campaign file): publish it first with `parley campaign publish FILE "
            "--activate`, or point the setting at a .yaml file"
        ) from None
    return version.name


async def _keep_opening(app: FastAPI, settings: Settings) -> None:
    while True:
        await asyncio.sleep(STORAGE_RETRY_SECONDS)
        try:
            await _open_storage(app, settings)
        except STORAGE_NOT_OPEN_YET as exc:
            _storage_waits(exc)
            continue
        log.info("storage is open: %s", _printable(app.state.db.url))
        return


def _storage_waits(exc: BaseException) -> None:
    log.warning(
        "%s; answering 503 (Retry-After %d s) until it can; retrying in %.0f s",
        exc if isinstance(exc, DatabaseUrlUnknown) else f"the database is unreachable ({exc!r})",
        STORAGE_RETRY_AFTER_SECONDS,
        STORAGE_RETRY_SECONDS,
    )


def _printable(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    _configure_logging()
    settings = get_settings()
    app.state.db = None
    opening: asyncio.Task[None] | None = None
    try:
        await _open_storage(app, settings)
    except STORAGE_NOT_OPEN_YET as exc:
        _storage_waits(exc)
        opening = asyncio.create_task(_keep_opening(app, settings))
    app.state.settings = settings
    channels = webhook_channels(settings)
    app.state.channels = channels.senders
    # The outreach channels' inbound halves: the webhook only verifies and parses with them.
    app.state.linkedin, app.state.email = channels.linkedin, channels.email
    try:
        yield
    finally:
        if opening is not None:
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
        await channels.aclose()
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            await runtime.aclose()
        if app.state.db is not None:
            await app.state.db.dispose()
        await close_prefect_api()


class BodySizeLimit:
    """Refuse bodies over ``limit`` bytes with 413 before they are read into memory: webhook
    URLs are public, and a provider's payloads are small."""

    def __init__(self, app: ASGIApp, limit: int, larger: dict[str, int] | None = None) -> None:
        """``larger``: paths that take bigger bodies (a lead import's file), with their limit."""
        self.app = app
        self.limit = limit
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope.get("path", ""), self.limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        await self.app(scope, self._counting(receive, limit), send)

    def _counting(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
            return message

        return counted


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app() -> FastAPI:
    application = FastAPI(title="Parley webhook", lifespan=lifespan)
    application.include_router(whatsapp.router)
    application.include_router(linkedin.router)
    application.include_router(email.router)
    application.include_router(campaigns.router)  # before api: /campaigns/{name}/{command}
    application.include_router(sending.router)  # before api: /conversations/{id}/{command}
    application.include_router(lead_imports.router)  # before api: /conversations/{id}
    application.include_router(api.router)
    application.include_router(identities.router)
    application.include_router(suppressions.router)

    @application.get("/healthz", tags=["health"])
    async def healthz(request: Request) -> dict[str, str]:
        """Liveness: the process is up (a restart would not help a storage that is not open
        yet; ``storage`` says whether requests are stored or answered 503)."""
        ready = getattr(request.app.state, "db", None) is not None
        return {"status": "ok", "storage": "open" if ready else "waiting"}

    @application.exception_handler(_BodyTooLarge)
    async def _chunked_too_large(_request: Request, _exc: _BodyTooLarge) -> JSONResponse:
        limit = get_settings().webhook_max_body_bytes
        return JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)

    for unavailable in (*STORAGE_UNAVAILABLE, StorageNotReady):
        application.add_exception_handler(unavailable, _storage_unavailable)
    application.add_middleware(
        BodySizeLimit,
        limit=get_settings().webhook_max_body_bytes,
        larger={lead_imports.BULK_PATH: get_settings().import_max_body_bytes},
    )
    return application


STORAGE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.TimeoutError,  # every pooled connection busy for pool_timeout: a burst
    sa_exc.OperationalError,  # the server went away, SQLite locked for too long
    sa_exc.InterfaceError,
    ConnectionError,  # asyncpg could not connect at all
)
STORAGE_RETRY_AFTER_SECONDS = 5
STORAGE_NOT_OPEN_YET: tuple[type[Exception], ...] = (DatabaseUrlUnknown, *STORAGE_UNAVAILABLE)


async def _storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database could not take the request: a 503 with Retry-After, not a 500 traceback.
    Providers deliver again on any 5xx, and storing is idempotent (by the provider's message
    id), so the retry loses nothing and duplicates nothing."""
    log.warning(
        "%s %s: storage unavailable (%r); answered 503", request.method, request.url.path, exc
    )
    return JSONResponse(
        {"detail": "storage is unavailable or overloaded right now; deliver this again"},
        status_code=503,
        headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)},
    )


app = create_app()
