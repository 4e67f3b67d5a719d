"""Waking the dispatcher the moment an action is ready, instead of at its next tick.

On PostgreSQL the enqueuing transaction sends ``NOTIFY parley_actions, '<identity id>'``
(``parley.db.queries.notify_action_ready``; delivered on commit, never for a rolled-back
enqueue), and a dispatcher process keeps one ``LISTEN`` connection
(``parley.db.notifications.Listener``, the inbox's kind): its tick loop waits on it
instead of sleeping. On SQLite, and whenever the listener is down, the loop sleeps the tick as
before. Either way the queue is the truth: a notification only says "look now", so a lost one
costs at most a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from sqlalchemy.engine import make_url

from parley.db.notifications import ACTIONS_CHANNEL, Listener

log = logging.getLogger(__name__)

CHANNEL = ACTIONS_CHANNEL


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
        self._told = asyncio.Event()
        self._listener = Listener(
            database_url,
            CHANNEL,
            on_notify=self._on_notify,
            on_lost=self._on_lost,
            fallback="sleeping the tick instead",
        )

    @property
    def listening(self) -> bool:
        return self._listener.listening

    def _on_notify(self, _payload: str) -> None:
        self._told.set()  # the payload (the identity) is for operators' psql; the tick looks at all

    def _on_lost(self) -> None:
        """Notifications sent while nobody listened are gone: look now, reconnect next wait."""
        log.warning("LISTEN %s connection lost; the dispatcher looks now", CHANNEL)
        self._told.set()

    async def wait(self, timeout: float) -> bool:
        if not await self._listener.ensure_listening():
            await asyncio.sleep(timeout)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._told.wait(), timeout)
        told = self._told.is_set()
        self._told.clear()
        return told

    async def close(self) -> None:
        await self._listener.close()


def action_signal_for(database_url: str) -> ActionSignal:
    if make_url(database_url).get_backend_name() != "postgresql":
        return SleepingSignal()
    return PostgresActionSignal(database_url)
