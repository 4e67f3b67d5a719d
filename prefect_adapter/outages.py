"""Riding out infrastructure outages inside a run: the database failing over, the Prefect API
restarting. Conversation tasks retry for ``PARLEY_INFRA_RETRY_SECONDS`` (minutes), not three
quick attempts; only after that does the run fail — and the dispatcher, reading Parley's row,
reschedules it (see ``prefect_adapter.repairs``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from prefect.exceptions import PrefectHTTPStatusError

from parley.retry import RetryPolicy, database_unavailable, retrying
from parley.settings import get_settings

T = TypeVar("T")


def prefect_unavailable(error: BaseException) -> bool:
    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, PrefectHTTPStatusError):
        return error.response.status_code >= 500 or error.response.status_code == 429
    return False


def infrastructure_unavailable(error: BaseException) -> bool:
    return database_unavailable(error) or prefect_unavailable(error)


def infra_policy() -> RetryPolicy:
    # Backoff capped well under a lease's third, so a run renews its lease soon after an outage.
    return RetryPolicy(budget_seconds=get_settings().infra_retry_seconds, max_delay=2.0)


async def riding_out_outages(operation: Callable[[], Awaitable[T]], what: str) -> T:
    return await retrying(
        operation, infra_policy(), retryable=infrastructure_unavailable, what=what
    )
