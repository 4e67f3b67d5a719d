"""What routes share: settings, the database, the channels, and the operator API key check.

Everything lives on ``app.state`` (built once in the lifespan) and reaches routes as
``Annotated`` dependencies, so a route reads like what it does.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, TypeVar

from fastapi import BackgroundTasks, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from parley.channels.base import Channel, InboundBatch
from parley.conversation import inbox, opt_out
from parley.db import Database
from parley.errors import (
    AlreadyExists,
    ConcurrentUpdate,
    ConfigurationError,
    InvalidInput,
    InvalidSignature,
    MalformedPayload,
    NotFound,
    ParleyError,
    TransitionNotAllowed,
)
from parley.inbox_signal import announce_stored, datagram_directory
from parley.outreach import dispatch
from parley.runtime import Runtime
from parley.settings import Settings
from prefect_adapter.composition import build_runtime
from prefect_adapter.runs import wake

T = TypeVar("T")
log = logging.getLogger(__name__)


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


class StorageNotReady(Exception):
    """The database is not open yet (its URL or the database itself could not be reached
    since the process started): the app answers 503 with Retry-After."""


def _db(request: Request) -> Database:
    db = getattr(request.app.state, "db", None)
    if db is None:
        raise StorageNotReady("the database is not open yet")
    return db  # type: ignore[no-any-return]


def _campaign_name(request: Request, db: Annotated[Database, Depends(_db)]) -> str:
    return request.app.state.campaign_name  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
DbDep = Annotated[Database, Depends(_db)]
CampaignNameDep = Annotated[str, Depends(_campaign_name)]


def _runtime(request: Request, db: DbDep, settings: SettingsDep) -> Runtime:
    """What a manual send needs (the outreach channels, the clock), on the app's own database:
    built on first use and closed with the app. There is no await between the look and the
    store, so two first requests cannot build two."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or runtime.db is not db:
        runtime = request.app.state.runtime = build_runtime(settings, db)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


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


HTTP_STATUS_OF: list[tuple[type[ParleyError], int]] = [
    (NotFound, 404),
    (AlreadyExists, 409),
    (TransitionNotAllowed, 409),
    (ConcurrentUpdate, 409),
    (InvalidInput, 422),
    (ConfigurationError, 422),
]
"""How the operator API answers Parley's refusals: unknown 404, not allowed now 409, invalid
input 422; nothing was changed in any of them."""


async def refusing(action: Awaitable[T]) -> T:
    """Await an operator action; a Parley refusal becomes the HTTP error with its reason."""
    try:
        return await action
    except ParleyError as exc:
        code = next((code for kind, code in HTTP_STATUS_OF if isinstance(exc, kind)), 400)
        raise HTTPException(status_code=code, detail=str(exc)) from exc


def read_signed(
    raw: bytes,
    headers: Mapping[str, str],
    verify: Callable[[bytes, Mapping[str, str]], None],
    parse: Callable[[bytes], T],
) -> T:
    """A provider's webhook body, verified before anything is read from it: 401 for a bad or
    missing signature, 400 with the reason for a body that is not the provider's format."""
    try:
        verify(raw, headers)
        return parse(raw)
    except InvalidSignature as exc:
        raise HTTPException(status_code=401, detail=str(exc)) from exc
    except MalformedPayload as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


async def store_and_wake(
    rt: Runtime,
    settings: Settings,
    background: BackgroundTasks,
    batch: InboundBatch,
    campaign_name: str | None,
) -> inbox.StoreResult:
    """Store every message once, then — after the 200 has gone out — start or resume the runs
    that are owed it (the dispatcher does whatever that does not finish)."""
    db = rt.db
    result = await inbox.store_batch(
        db,
        batch,
        campaign_name,
        own_number=settings.whatsapp_phone_number_id,
        settle_action=dispatch.reconcile_status,  # a status callback of an outreach action
    )
    announce_stored(datagram_directory(db.url), result.received)  # SQLite; PostgreSQL NOTIFYs
    for wakeup in result.wakeups:
        background.add_task(wake, db, settings, wakeup)
    for wakeup in result.outcome_wakeups:  # an outreach action settled by its status callback
        background.add_task(wake, db, settings, wakeup, "action")
    for conversation_id in result.confirmations:  # a "STOP" answered where the channel must
        background.add_task(_confirm_stop, rt, conversation_id)
    return result


async def _confirm_stop(rt: Runtime, conversation_id: int) -> None:
    """After the 200: a failure is logged; the conversation has ended and the address is
    suppressed either way (the confirmation is a courtesy the channel asks for)."""
    try:
        await opt_out.send_confirmation(rt, conversation_id)
    except Exception:
        log.exception("stop confirmation of conversation %s not sent", conversation_id)
