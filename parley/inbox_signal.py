"""Waking a hot conversation the moment its message is stored.

On PostgreSQL the inbox insert sends ``NOTIFY parley_inbox, '<conversation id>'`` in the same
transaction (delivered on commit), and each worker process keeps one ``LISTEN`` connection that
wakes the waiting run. On SQLite, and whenever the listener is down, waiting falls back to
polling the inbox every ``hot_poll_seconds``. Either way the inbox is the truth: a notification
only says "look now".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "parley_inbox"


class InboxSignal(Protocol):
    async def wait(self, conversation_id: int, timeout: float) -> bool:
        """Return when a message for the conversation may have arrived (True: we were told so)
        or after ``timeout`` (False)."""


class PollingSignal:
    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds

    async def wait(self, conversation_id: int, timeout: float) -> bool:
        await asyncio.sleep(min(timeout, self.poll_seconds))
        return False


class PostgresSignal:
    """One LISTEN connection per process, fanned out to the conversations waiting in it."""

    def __init__(self, database_url: str, *, fallback_poll_seconds: float = 1.0) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._fallback = fallback_poll_seconds
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._connection: Any = None
        self._lock = asyncio.Lock()

    async def _ensure_listening(self) -> bool:
        async with self._lock:
            if self._connection is not None and not self._connection.is_closed():
                return True
            try:
                self._connection = await asyncpg.connect(self._dsn)
                await self._connection.add_listener(CHANNEL, self._on_notify)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN %s unavailable (%r); polling instead", CHANNEL, exc)
                self._connection = None
                return False
            return True

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            for event in self._waiters.get(int(payload), ()):
                event.set()

    async def wait(self, conversation_id: int, timeout: float) -> bool:
        if not await self._ensure_listening():
            await asyncio.sleep(min(timeout, self._fallback))
            return False
        event = asyncio.Event()
        self._waiters[conversation_id].add(event)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(timeout, self._fallback))
            return event.is_set()
        finally:
            self._waiters[conversation_id].discard(event)
            if not self._waiters[conversation_id]:
                del self._waiters[conversation_id]

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
