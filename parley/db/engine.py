"""Engine and transaction setup for both backends.

SQLite is the embedded default, shared by the webhook and worker processes: WAL so readers never
block, a busy timeout so writers queue instead of failing, and ``BEGIN IMMEDIATE`` so every
transaction takes the write lock up front — that is SQLite's stand-in for PostgreSQL's
``SELECT ... FOR UPDATE`` row lock that the inbox handshake relies on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

READONLY_OPTION = "parley_readonly"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def async_url(url: str) -> str:
    """The async-driver form of a database URL (a block or an operator may give a sync one:
    ``postgresql://…`` or ``postgresql+psycopg2://…`` → ``postgresql+asyncpg://…``)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in _ASYNC_DRIVERS and parsed.drivername != _ASYNC_DRIVERS[backend]:
        parsed = parsed.set(drivername=_ASYNC_DRIVERS[backend])
    return parsed.render_as_string(hide_password=False)


def _ensure_sqlite_dir(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        readonly = connection.get_execution_options().get(READONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def create_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> AsyncEngine:
    if is_sqlite(url):
        _ensure_sqlite_dir(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True
    )


class Database:
    """One engine plus a session factory; ``transaction()`` is the only way code writes."""

    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 10) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction: on SQLite it does not take the write lock, so pollers (a hot
        conversation checking its inbox) never queue behind, or block, the writers."""
        async with self.engine.connect() as connection:
            connection = await connection.execution_options(**{READONLY_OPTION: True})
            async with connection.begin(), AsyncSession(bind=connection) as session:
                yield session

    @asynccontextmanager
    async def pinned(self) -> AsyncIterator[PinnedConnection]:
        """One connection for a series of short transactions (a dispatcher draining an
        identity, which holds it between provider calls anyway): checked out of the pool — and
        pinged — once, instead of once per transaction."""
        async with self.engine.connect() as connection:
            yield PinnedConnection(connection)

    async def dispose(self) -> None:
        await self.engine.dispose()


class PinnedConnection:
    """``transaction()`` as ``Database.transaction()`` gives it, on one held connection."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with (
            self.connection.begin(),
            AsyncSession(bind=self.connection, expire_on_commit=False) as session,
        ):
            yield session
            await session.flush()  # the session joined this transaction: it does not commit
