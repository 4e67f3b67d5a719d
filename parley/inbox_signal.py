"""Waking a hot conversation the moment its message is stored.

On PostgreSQL the inbox insert sends ``NOTIFY parley_inbox, '<conversation id>'`` in the same
transaction (delivered on commit), and each worker process keeps one ``LISTEN`` connection
(``parley.db.notifications.Listener``, the dispatcher's kind) that wakes the waiting run;
whenever the listener is down, waiting falls back to polling. On SQLite
(one machine) the webhook sends a Unix datagram to each worker after its commit
(``DatagramSignal``), on top of polling the inbox every ``hot_poll_seconds``. Either way the
inbox is the truth: a notification only says "look now".
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import logging
import os
import secrets
import socket
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import make_url

from parley.db.notifications import INBOX_CHANNEL, Listener

log = logging.getLogger(__name__)

CHANNEL = INBOX_CHANNEL


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

    def __init__(self, owner: _Waiters) -> None:
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


class _Waiters:
    """The conversations waiting hot in this process, each with its waiters' flags: what a
    notification — NOTIFY or datagram, its payload a conversation id — is fanned out to."""

    fallback: float
    trusted_seconds: float

    def __init__(self) -> None:
        self._waiters: dict[int, set[_Told]] = defaultdict(set)

    @property
    def listening(self) -> bool:
        raise NotImplementedError

    async def ensure_listening(self) -> bool:
        raise NotImplementedError

    def _tell(self, payload: str | bytes) -> None:
        with contextlib.suppress(ValueError):
            for told in self._waiters.get(int(payload), ()):
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


class PostgresSignal(_Waiters):
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
        super().__init__()
        self.fallback = fallback_poll_seconds
        self.trusted_seconds = trusted_seconds
        self._listener = Listener(
            database_url,
            CHANNEL,
            on_notify=self._tell,
            on_lost=self._on_lost,
            fallback="polling instead",
        )

    @property
    def listening(self) -> bool:
        return self._listener.listening

    async def ensure_listening(self) -> bool:
        return await self._listener.ensure_listening()

    def _on_lost(self) -> None:
        """Notifications sent while nobody listened are gone: everyone looks now."""
        log.warning("LISTEN %s connection lost; waiters look at their inbox", CHANNEL)
        for waiters in self._waiters.values():
            for told in waiters:
                told.event.set()

    async def close(self) -> None:
        await self._listener.close()


# --- SQLite: one machine, so a datagram is enough ----------------------------------------------


@functools.cache
def datagram_directory(database_url: str) -> Path | None:
    """Where the worker processes of a SQLite database listen: a short directory named after
    the database file (Unix socket paths are limited to ~100 bytes, test paths are not), so
    the webhook and the workers find each other from the one thing they share — the file.
    Cached: the webhook asks on every stored message."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    digest = hashlib.sha1(str(Path(url.database).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"parley-inbox-{digest}"


def announce_stored(directory: Path | None, conversation_ids: Iterable[int]) -> int:
    """After the commit: tell every worker listening on this database which conversations got
    a message. Never blocks and never fails the request — a lost datagram costs one poll."""
    ids = sorted(set(conversation_ids))
    if directory is None or not ids or not hasattr(socket, "AF_UNIX"):
        return 0
    try:
        listeners = list(directory.glob("*.sock"))
    except OSError:
        return 0
    told = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for path in listeners:
            for conversation_id in ids:
                try:
                    sender.sendto(str(conversation_id).encode(), str(path))
                    told += 1
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        path.unlink()  # its worker is gone
                    break
                except OSError:
                    break  # its buffer is full: that worker polls
    return told


class DatagramSignal(_Waiters):
    """SQLite's wake-up: each worker process binds one Unix datagram socket in
    ``datagram_directory``; the webhook sends it the conversation id after storing a message.
    Polling every ``poll_seconds`` stays underneath, so a worker that could not bind, or a
    datagram dropped on a full buffer, costs at most one poll, as before."""

    def __init__(self, directory: Path, poll_seconds: float) -> None:
        super().__init__()
        self.directory = directory
        # A datagram is only a hint: the poll keeps its pace whether or not we are bound.
        self.trusted_seconds = self.fallback = poll_seconds
        self._socket: socket.socket | None = None
        self._path: Path | None = None
        self._failed = False

    @property
    def listening(self) -> bool:
        return self._socket is not None

    async def ensure_listening(self) -> bool:
        if self._socket is None and not self._failed:
            self._bind()
        return True  # polling works either way

    def _bind(self) -> None:
        path = self.directory / f"{os.getpid()}-{secrets.token_hex(3)}.sock"
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.setblocking(False)
            listener.bind(str(path))
            asyncio.get_running_loop().add_reader(listener.fileno(), self._on_readable)
        except (OSError, AttributeError, NotImplementedError) as exc:
            log.warning("inbox datagrams unavailable at %s (%r); polling only", path, exc)
            self._failed = True
            return
        self._socket, self._path = listener, path
        atexit.register(self._unlink)  # a worker that exits cleanly leaves no socket behind

    def _unlink(self) -> None:
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only if no other worker of this database listens

    def _on_readable(self) -> None:
        assert self._socket is not None
        while True:
            try:
                payload = self._socket.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._tell(payload)

    async def close(self) -> None:
        listener, self._socket = self._socket, None
        if listener is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        self._unlink()
