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
from collections.abc import AsyncIterator
from typing import Any, Protocol

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "parley_inbox"


class Subscription(Protocol):
    async def wait(self, timeout: float) -> bool:
        """Return when a message may have arrived since the last ``wait`` (True: we were told
        so) or after ``timeout`` (False). A notification between two waits is not lost."""

    @property
    def recheck_seconds(self) -> float:
        """How long a waiter may trust the signal before it looks at the inbox anyway."""


class InboxSignal(Protocol):
    def subscribe(
        self, conversation_id: int
    ) -> contextlib.AbstractAsyncContextManager[Subscription]:
        """Listen for one conversation's messages for as long as the context lasts."""


class PollingSignal:
    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds

    @contextlib.asynccontextmanager
    async def subscribe(self, conversation_id: int) -> AsyncIterator[Subscription]:
        yield _Polling(self.poll_seconds)

    async def wait(self, conversation_id: int, timeout: float) -> bool:
        async with self.subscribe(conversation_id) as subscription:
            return await subscription.wait(timeout)


class _Polling:
    def __init__(self, poll_seconds: float) -> None:
        self.recheck_seconds = poll_seconds

    async def wait(self, timeout: float) -> bool:
        await asyncio.sleep(min(timeout, self.recheck_seconds))
        return False


class _Told:
    """One waiter's flag, set by a notification (or the loss of the LISTEN connection)."""

    def __init__(self, owner: PostgresSignal) -> None:
        self._owner = owner
        self.event = asyncio.Event()

    @property
    def recheck_seconds(self) -> float:
        return self._owner.trusted_seconds if self._owner.listening else self._owner.fallback

    async def wait(self, timeout: float) -> bool:
        if not await self._owner.ensure_listening():
            await asyncio.sleep(min(timeout, self._owner.fallback))
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), min(timeout, self.recheck_seconds))
        told = self.event.is_set()
        self.event.clear()
        return told


class PostgresSignal:
    """One LISTEN connection per process, fanned out to the conversations waiting in it.

    While the connection is up a waiter trusts it for ``trusted_seconds`` between looks at the
    inbox (a thousand hot conversations then cost a few reads a second, not a thousand); when
    it drops, every waiter is woken to look at once and falls back to polling every
    ``fallback_poll_seconds`` until it is back."""

    def __init__(
        self,
        database_url: str,
        *,
        fallback_poll_seconds: float = 1.0,
        trusted_seconds: float = 5.0,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self.fallback = fallback_poll_seconds
        self.trusted_seconds = trusted_seconds
        self._waiters: dict[int, set[_Told]] = defaultdict(set)
        self._connection: Any = None
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def ensure_listening(self) -> bool:
        if self.listening:
            return True
        async with self._lock:
            if self.listening:
                return True
            try:
                self._connection = await asyncpg.connect(self._dsn)
                await self._connection.add_listener(CHANNEL, self._on_notify)
                self._connection.add_termination_listener(self._on_lost)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN %s unavailable (%r); polling instead", CHANNEL, exc)
                self._connection = None
                return False
            return True

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            for told in self._waiters.get(int(payload), ()):
                told.event.set()

    def _on_lost(self, _conn: object) -> None:
        """Notifications sent while nobody listened are gone: everyone looks now."""
        log.warning("LISTEN %s connection lost; waiters look at their inbox", CHANNEL)
        for waiters in self._waiters.values():
            for told in waiters:
                told.event.set()

    @contextlib.asynccontextmanager
    async def subscribe(self, conversation_id: int) -> AsyncIterator[Subscription]:
        told = _Told(self)
        self._waiters[conversation_id].add(told)
        try:
            await self.ensure_listening()
            yield told
        finally:
            self._waiters[conversation_id].discard(told)
            if not self._waiters[conversation_id]:
                del self._waiters[conversation_id]

    async def wait(self, conversation_id: int, timeout: float) -> bool:
        """One wait on a subscription of its own (tests, single looks)."""
        async with self.subscribe(conversation_id) as subscription:
            return await subscription.wait(timeout)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
