"""PostgreSQL notifications: the channels Parley's transactions ``NOTIFY`` on, and the one
``LISTEN`` connection a process keeps per channel to hear them.

``parley_inbox`` (payload: a conversation id) is sent by the inbox insert and wakes the hot
conversation waiting in a worker (``parley.inbox_signal``); ``parley_actions`` (payload: an
identity id) is sent by the action enqueue and wakes the dispatcher's tick
(``parley.action_signal``). A notification is delivered on commit, never for a rolled-back
transaction, and only ever says "look now": the tables are the truth, so whoever waits falls
back to polling while the connection is down and looks at once when it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

INBOX_CHANNEL = "parley_inbox"
ACTIONS_CHANNEL = "parley_actions"

CONNECT_TIMEOUT_SECONDS = 10


class Listener:
    """One ``LISTEN`` connection on ``channel``, opened on first use and again after a loss.

    ``on_notify`` gets each notification's payload; ``on_lost`` is called when the connection
    drops (what was sent meanwhile is gone, so waiters should look now); ``ensure_listening``
    then reconnects on the next wait. While it cannot connect, ``ensure_listening`` says False
    and the caller does what ``fallback`` says (for the log)."""

    def __init__(
        self,
        database_url: str,
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_lost: Callable[[], None],
        fallback: str,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self.channel = channel
        self._on_notify = on_notify
        self._on_lost = on_lost
        self._fallback = fallback
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
                connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_SECONDS)
                await connection.add_listener(self.channel, self._notified)
                connection.add_termination_listener(self._lost)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN %s unavailable (%r); %s", self.channel, exc, self._fallback)
                self._connection = None
                return False
            self._connection = connection
            return True

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)

    def _lost(self, _conn: object) -> None:
        self._on_lost()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await connection.close()
