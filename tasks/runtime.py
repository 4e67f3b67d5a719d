"""Per-process resources for tasks: the database, provider clients, parsed campaigns.

Built lazily once per worker process. The database URL comes from the ``parley-db``
SqlAlchemyConnector block when one exists (so operators manage credentials in the Prefect UI),
else from ``PARLEY_DATABASE_URL`` / the embedded SQLite default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial

from parley import step
from parley.campaign.registry import CampaignCache
from parley.channels.sender import WhatsAppSender
from parley.channels.whatsapp import WhatsAppClient
from parley.db import Database
from parley.http_action import post_json
from parley.settings import Settings, get_settings

log = logging.getLogger(__name__)

_runtime: step.StepRuntime | None = None
_lock = asyncio.Lock()


async def database_url_from_block(settings: Settings) -> str | None:
    if settings.database_url or not settings.db_block:
        return None
    try:
        from prefect_sqlalchemy import SqlAlchemyConnector

        block = await SqlAlchemyConnector.aload(settings.db_block)
    except (ValueError, ImportError) as exc:  # block not registered / not found
        log.debug("no %s block (%s); using PARLEY_DATABASE_URL", settings.db_block, exc)
        return None
    url = block.connection_info.rendered_url
    return str(url.render_as_string(hide_password=False))


async def get_runtime() -> step.StepRuntime:
    global _runtime
    async with _lock:
        if _runtime is None:
            settings = get_settings()
            url = await database_url_from_block(settings) or settings.resolved_database_url
            client = WhatsAppClient(
                settings.whatsapp_api_url,
                settings.whatsapp_access_token,
                settings.whatsapp_phone_number_id,
                timeout=settings.whatsapp_timeout_seconds,
            )
            _runtime = step.StepRuntime(
                db=Database(url),
                sender=WhatsAppSender(client),
                post_json=partial(post_json),
                campaigns=CampaignCache(),
                lease_seconds=settings.lease_seconds,
                reconcile_seconds=settings.send_reconcile_seconds,
                poll_seconds=settings.hot_poll_seconds,
            )
    return _runtime


@contextlib.asynccontextmanager
async def keep_lease(conversation_id: int) -> AsyncIterator[None]:
    """Renew the conversation's lease while this process works on it, so the sweep only
    reschedules runs whose process is really gone (even during a long step's retries)."""
    rt = await get_runtime()

    async def renew_forever() -> None:
        while True:
            await asyncio.sleep(rt.lease_seconds / 3)
            try:
                await step.renew_lease(rt, conversation_id)
            except Exception:  # a missed renewal is retried next tick
                log.exception("lease renewal failed for conversation %s", conversation_id)

    renewer = asyncio.create_task(renew_forever())
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
