"""Waking the dispatcher the moment an action is ready, instead of at its next tick.

On PostgreSQL the enqueuing transaction sends ``NOTIFY parley_actions, '<identity id>'``
(``parley.db.queries.notify_action_ready``; delivered on commit, never for a rolled-back
enqueue), and a dispatcher process keeps one ``LISTEN`` connection: its tick loop waits on it
instead of sleeping. On SQLite, and whenever the listener is down, the loop sleeps the tick as
before. Either way the queue is the truth: a notification only says "look now", so a lost one
costs at most a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "parley_actions"


class ActionSignal(Protocol):
    async def wait(self, timeout: float) -> bool:
        """Return when an action may have become ready since the last ``wait`` (True: we were
        told so) or after ``timeout`` (False). A notification between two waits is kept."""

    async def close(self) -> None: ...


class SleepingSignal:
    """SQLite: nobody can tell us; the tick is the only wake-up."""

    async def wait(self, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False

    async def close(self) -> None:
        return None


class PostgresActionSignal:
    """One LISTEN connection per process; any identity's notification wakes the waiter (the
    tick then looks at every identity with due actions)."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._told = asyncio.Event()
        self._connection: Any = None
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def _ensure_listening(self) -> bool:
        if self.listening:
            return True
        async with self._lock:
            if self.listening:
                return True
            try:
                connection = await asyncpg.connect(self._dsn, timeout=10)
                await connection.add_listener(CHANNEL, self._on_notify)
                connection.add_termination_listener(self._on_lost)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN %s unavailable (%r); sleeping the tick instead", CHANNEL, exc)
                self._connection = None
                return False
            self._connection = connection
            return True

    def _on_notify(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._told.set()  # the payload (the identity) is for operators' psql; the tick looks at all

    def _on_lost(self, _conn: object) -> None:
        """Notifications sent while nobody listened are gone: look now, reconnect next wait."""
        log.warning("LISTEN %s connection lost; the dispatcher looks now", CHANNEL)
        self._told.set()

    async def wait(self, timeout: float) -> bool:
        if not await self._ensure_listening():
            await asyncio.sleep(timeout)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._told.wait(), timeout)
        told = self._told.is_set()
        self._told.clear()
        return told

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await connection.close()


def action_signal_for(database_url: str) -> ActionSignal:
    if make_url(database_url).get_backend_name() != "postgresql":
        return SleepingSignal()
    return PostgresActionSignal(database_url)
