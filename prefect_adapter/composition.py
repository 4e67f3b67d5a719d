"""The composition root: the one place a Parley process gets its settings, its database, its
channels and its ``Runtime`` — the worker (``deployments.worker``, ``deployments.prefect_worker``),
the dispatcher (``flows.dispatcher``, run by the worker) and the webhook (``webhook.app``) alike.

* ``get_settings()`` — the settings (``PARLEY_*``), read once per process;
* ``open_database(settings)`` — the database, its URL from the ``parley-db``
  SqlAlchemyConnector block when one exists (so operators manage credentials in the Prefect UI),
  else from ``PARLEY_DATABASE_URL`` / the embedded SQLite default. What the block said is kept
  under ``PARLEY_DATA_DIR``, so a process started while Prefect is down still finds its database;
* ``build_runtime(settings, db)`` — what conversation steps and outreach actions need;
* ``get_runtime()`` — this process's ``Runtime``, built lazily once (the worker's runs, the
  dispatcher, the webhook's manual sends);
* ``webhook_channels(settings)`` — the webhook's channels: the senders and the outreach
  channels' inbound halves (it only verifies and parses with those);
* ``publish_installation(settings)`` — what ``parley campaign publish`` and
  ``POST /api/campaigns`` check a campaign against: the configured channels and Prefect's
  Secret blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from parley.campaign.installation import Installation, configured_channels
from parley.campaign.registry import CampaignCache
from parley.channels.base import Channel
from parley.channels.catalog import build_channels, build_outreach
from parley.channels.email.channel import EmailChannel, EmailConfig
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.clock import clock_from
from parley.conversation import handshake
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.db.engine import async_url, is_sqlite
from parley.errors import NotFound
from parley.inbox_signal import (
    DatagramSignal,
    InboxSignal,
    PostgresSignal,
    datagram_directory,
)
from parley.retry import RetryPolicy
from parley.runtime import Runtime
from parley.settings import Settings
from parley.settings import get_settings as get_settings  # the settings of every process
from prefect_adapter.client import unreachable
from prefect_adapter.secret_names import PrefectSecretNames

log = logging.getLogger(__name__)

_runtime: Runtime | None = None
_lock = asyncio.Lock()


async def database_url_from_block(block_name: str) -> str | None:
    """The URL in the ``SqlAlchemyConnector`` block, or None when there is no such block."""
    if not block_name:
        return None
    from prefect_sqlalchemy import SqlAlchemyConnector
    from prefect_sqlalchemy.credentials import ConnectionComponents

    try:
        block = await SqlAlchemyConnector.aload(block_name)
    except ValueError as exc:  # "Unable to find block document named ..."
        log.debug("no %s block (%s); using PARLEY_DATABASE_URL", block_name, exc)
        return None
    info = block.connection_info
    url = info.create_url() if isinstance(info, ConnectionComponents) else str(info)
    rendered = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return async_url(rendered)


BLOCK_LOOKUP_SECONDS = 10.0
"""A Prefect that does not answer in this long counts as unreachable for the block lookup."""
BLOCK_CACHE_FILE = "db-block-cache.json"


class DatabaseUrlUnknown(Exception):
    """Only the ``parley-db`` block can name the database, and Prefect cannot be reached to
    read it (nothing cached from an earlier start, no PARLEY_DATABASE_URL): retry later."""


async def resolve_database_url(settings: Settings) -> str:
    """Deployments take credentials from the ``parley-db`` block (managed in the Prefect UI)
    when it exists, else from PARLEY_DATABASE_URL / the embedded SQLite default.

    With Prefect unreachable (an outage, a deploy) a process must still start: it uses what
    the block said the last time it was read (kept in ``PARLEY_DATA_DIR``), else an explicit
    PARLEY_DATABASE_URL; with neither it raises ``DatabaseUrlUnknown`` — never a guess that
    could store into another database than the workers read."""
    try:
        async with asyncio.timeout(BLOCK_LOOKUP_SECONDS):
            from_block = await database_url_from_block(settings.db_block)
    except Exception as exc:
        if not unreachable(exc):
            raise
        return _without_prefect(settings, exc)
    _remember_block(settings, from_block)
    return from_block or settings.resolved_database_url


def block_cache_path(settings: Settings) -> Path:
    return settings.data_dir / BLOCK_CACHE_FILE


def _remember_block(settings: Settings, url: str | None) -> None:
    """Written only on change, readable by this user only (it holds the password)."""
    if not settings.db_block:
        return
    path = block_cache_path(settings)
    record = {"block": settings.db_block, "url": url}
    try:
        if path.exists() and json.loads(path.read_text()) == record:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process
        fd = os.open(partial_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out)
        os.replace(partial_path, path)
    except (OSError, ValueError) as exc:  # a read-only data dir costs only the fallback
        log.warning("could not keep the %s block's URL in %s: %r", settings.db_block, path, exc)


def _without_prefect(settings: Settings, exc: BaseException) -> str:
    api = prefect_api_url()
    try:
        record = json.loads(block_cache_path(settings).read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("block") == settings.db_block:
        cached = record.get("url")
        log.warning(
            "Prefect API at %s unreachable (%r); using the database the %r block named when "
            "it was last read (%s)",
            api,
            exc,
            settings.db_block,
            "no such block: PARLEY_DATABASE_URL" if cached is None else "kept in PARLEY_DATA_DIR",
        )
        return str(cached) if cached else settings.resolved_database_url
    if settings.database_url.get_secret_value():
        log.warning(
            "Prefect API at %s unreachable (%r); the %r block could not be checked: using "
            "PARLEY_DATABASE_URL",
            api,
            exc,
            settings.db_block,
        )
        return settings.resolved_database_url
    raise DatabaseUrlUnknown(
        f"Prefect API at {api} unreachable ({exc!r}) and PARLEY_DATABASE_URL is not set: the "
        f"database URL can only come from the {settings.db_block!r} block"
    )


def prefect_api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value() or "(PREFECT_API_URL not set)")


async def prefect_secret(name: str) -> str:
    """``{secret.name}`` in a campaign's http headers: a Prefect Secret block, editable in the
    UI and never stored in Parley's database or any task result."""
    from prefect.blocks.system import Secret

    try:
        block: Secret[str] = await Secret.aload(name)
    except ValueError as exc:
        raise NotFound(f"no Prefect Secret block named {name!r}") from exc
    return str(block.get())


async def open_database(settings: Settings) -> Database:
    """The database every Parley process uses: the URL as ``resolve_database_url`` finds it
    (raises ``DatabaseUrlUnknown`` while only an unreachable Prefect could name it), the pool
    as the settings size it. Nothing is connected yet."""
    return Database(
        await resolve_database_url(settings),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )


def build_runtime(settings: Settings, db: Database) -> Runtime:
    """What steps and outreach actions need, from the settings: provider clients (created on
    first use), the clock, retry budgets, the inbox's wake-up and Prefect's Secret blocks."""
    return Runtime(
        db=db,
        channels=build_channels(settings),
        outreach=build_outreach(settings),
        post_json=partial(post_json),
        campaigns=CampaignCache(),
        lease_seconds=settings.lease_seconds,
        reconcile_seconds=settings.send_reconcile_seconds,
        action_reconcile_seconds=settings.action_reconcile_seconds,
        send_retry=RetryPolicy(budget_seconds=settings.send_retry_seconds),
        clock=clock_from(settings.clock_file),
        poll_seconds=settings.hot_poll_seconds,
        inbox_signal=_inbox_signal(db.url, settings.hot_poll_seconds),
        environ=dict(os.environ),
        secrets=prefect_secret,
    )


async def get_runtime() -> Runtime:
    """This process's ``Runtime``, built on first use from ``get_settings()``."""
    global _runtime
    async with _lock:
        if _runtime is None:
            settings = get_settings()
            _runtime = build_runtime(settings, await open_database(settings))
    return _runtime


@dataclass
class WebhookChannels:
    """The webhook's channels: ``senders`` by channel name (WhatsApp's webhook is verified and
    parsed with its sender), and the outreach channels' inbound halves."""

    senders: dict[str, Channel]
    linkedin: LinkedInChannel
    email: EmailChannel

    async def aclose(self) -> None:
        for channel in self.senders.values():
            await channel.aclose()
        await self.linkedin.aclose()
        await self.email.aclose()


def webhook_channels(settings: Settings) -> WebhookChannels:
    return WebhookChannels(
        senders=build_channels(settings),
        linkedin=LinkedInChannel(
            LinkedInConfig(webhook_secret=settings.linkedin_webhook_secret.get_secret_value())
        ),
        email=EmailChannel(
            EmailConfig(webhook_secret=settings.email_webhook_secret.get_secret_value())
        ),
    )


def publish_installation(settings: Settings) -> Installation:
    return Installation(configured_channels(settings), secrets=PrefectSecretNames())


def _inbox_signal(url: str, poll_seconds: float) -> InboxSignal | None:
    """PostgreSQL: LISTEN/NOTIFY. SQLite: the webhook's datagrams on top of polling."""
    if not is_sqlite(url):
        return PostgresSignal(url)
    directory = datagram_directory(url)
    return DatagramSignal(directory, poll_seconds) if directory is not None else None


def stop_gracefully() -> None:
    """Called by the worker on shutdown: hot runs suspend now rather than be killed, and the
    dispatcher run ends at its next tick (the next worker's kick replaces it)."""
    if _runtime is not None:
        _runtime.stopping = True


@contextlib.asynccontextmanager
async def keep_lease(conversation_id: int) -> AsyncIterator[None]:
    """Renew the conversation's lease while this process works on it, so the sweep only
    reschedules runs whose process is really gone (even during a long step's retries)."""
    rt = await get_runtime()

    async def renew_forever() -> None:
        while True:
            await asyncio.sleep(rt.lease_seconds / 3)
            try:
                await handshake.renew_lease(rt, conversation_id)
            except Exception:  # a missed renewal is retried next tick
                log.exception("lease renewal failed for conversation %s", conversation_id)

    renewer = asyncio.create_task(renew_forever())
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
