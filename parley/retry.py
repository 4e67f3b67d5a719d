"""Retrying for a bounded *time*, not a number of quick attempts.

A provider outage of a few minutes, a database failover or a Prefect API restart must not fail
conversations: three attempts a second apart is over before any of them ends. A ``RetryPolicy``
keeps trying for ``budget_seconds``, waiting as the provider asks (``Retry-After``) or with
capped exponential backoff, and then lets the last error through so the caller can give up with
a reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from parley.errors import ChannelError, RateLimited

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    budget_seconds: float
    first_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.2  # +-20 %: retries of many conversations do not arrive in lockstep

    def delay(self, attempt: int, error: BaseException) -> float:
        """Seconds before attempt ``attempt + 1``; a provider's retry-after wins."""
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return max(0.0, float(error.retry_after))
        base = min(self.max_delay, self.first_delay * 2.0**attempt)
        return base * (1 + random.uniform(-self.jitter, self.jitter))


async def retrying(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    retryable: Callable[[BaseException], bool],
    what: str,
) -> T:
    """Run ``operation`` until it succeeds, raises something not ``retryable``, or the next wait
    would end after ``policy.budget_seconds``; then the last error propagates."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.budget_seconds
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception as error:
            if not retryable(error):
                raise
            pause = policy.delay(attempt, error)
            if loop.time() + pause > deadline:
                log.warning("%s: giving up after %.0f s: %r", what, policy.budget_seconds, error)
                raise
            log.info("%s failed (%r); retrying in %.1f s", what, error, pause)
            await asyncio.sleep(pause)
            attempt += 1


def provider_may_retry(error: BaseException) -> bool:
    """A provider said 'later' (429, 5xx, a timeout): trying again can help."""
    return isinstance(error, ChannelError) and error.retryable


_CONNECTION_ERRORS = (
    OSError,  # refused, reset, unreachable (ConnectionError is one)
    TimeoutError,
    PoolTimeout,
    InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
)


def database_unavailable(error: BaseException) -> bool:
    """The database (or the network to it) is away, not the statement wrong: a failover, a
    restart, a dropped connection. Walks the cause chain: SQLAlchemy wraps the driver's error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _CONNECTION_ERRORS):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OperationalError) and _sqlite_busy(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _sqlite_busy(error: OperationalError) -> bool:
    return "database is locked" in str(error)
