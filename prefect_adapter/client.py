"""One Prefect API client per process and event loop, shared by everything that calls Prefect.

``get_client()`` outside a flow run builds a new client each time, and a new client costs
~28 ms of CPU (most of it loading the CA bundle into a TLS context, even for ``http://``),
spent on the event loop: under a burst of new contacts the webhook did that for every start
and every resume, and its 200s queued behind it. Inside a flow run (or the worker's shared
engine) Prefect's own context client is used, as ``get_client()`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.context import AsyncClientContext
from prefect.exceptions import FlowPauseTimeout, NotPausedError, PrefectHTTPStatusError

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PrefectClient] = (
    weakref.WeakKeyDictionary()
)
_deployment_ids: dict[str, UUID] = {}


@contextlib.asynccontextmanager
async def prefect_api() -> AsyncIterator[PrefectClient]:
    """The client to use now; never closed by the caller (``close_prefect_api`` does that)."""
    loop = asyncio.get_running_loop()
    context = AsyncClientContext.get()
    if context is not None and getattr(context.client, "_loop", None) is loop:
        yield context.client
        return
    client = _clients.get(loop)
    if client is None:
        client = get_client()
        assert isinstance(client, PrefectClient)
        try:
            await client.__aenter__()
        except RuntimeError as exc:  # its version check: "Failed to reach API at ..."
            if exc.__cause__ is not None and unreachable(exc.__cause__):
                raise exc.__cause__ from exc  # what callers catch as "Prefect unavailable"
            raise
        if (raced := _clients.get(loop)) is not None:  # another caller opened one meanwhile
            await client.__aexit__(None, None, None)
            client = raced
        _clients[loop] = client
    yield client


PREFECT_RETRY_SECONDS = 5.0


def unreachable(exc: BaseException) -> bool:
    """The Prefect API cannot be reached or is failing on its side: wait and try again. A 4xx
    is an answer, and a process that got one has something to fix, not to wait for."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    if isinstance(exc, RuntimeError) and exc.__cause__ is not None:
        return unreachable(exc.__cause__)  # a new client's version check: "Failed to reach API"
    return isinstance(exc, (httpx.TransportError, OSError, TimeoutError))


async def wait_for_prefect_api(
    log: logging.Logger,
    stopping: asyncio.Event | None = None,
    *,
    after: BaseException | None = None,
) -> bool:
    """Until the API answers its health check. A process started during a Prefect outage (a
    restart, a deploy) waits here with a line in its log every try, instead of exiting for a
    process manager to restart it in a loop. False if ``stopping`` was set meanwhile."""
    from prefect.settings import PREFECT_API_URL

    error: BaseException | None = after
    while True:
        if error is None:
            try:
                async with get_client() as client:
                    error = await client.api_healthcheck()
            except Exception as exc:
                error = exc
        if error is None:
            return True
        log.warning(
            "Prefect API at %s unreachable (%r); retrying in %.0f s",
            PREFECT_API_URL.value(),
            error,
            PREFECT_RETRY_SECONDS,
        )
        error = None
        if stopping is None:
            await asyncio.sleep(PREFECT_RETRY_SECONDS)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), PREFECT_RETRY_SECONDS)
            if stopping.is_set():
                return False


async def deployment_id(name: str, *, fresh: bool = False) -> UUID:
    """A deployment's id by ``flow/deployment`` name, asked once per process: a start then
    costs one API call, not two. ``fresh`` after Prefect said the id is gone (redeployed)."""
    if fresh or name not in _deployment_ids:
        async with prefect_api() as client:
            _deployment_ids[name] = (await client.read_deployment_by_name(name)).id
    return _deployment_ids[name]


async def close_prefect_api() -> None:
    """At shutdown (the webhook's lifespan): close this loop's client, if one was opened."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.__aexit__(None, None, None)


async def resume(flow_run_id: UUID, run_input: dict[str, Any]) -> None:
    """``prefect.flow_runs.aresume_flow_run`` in one call instead of two: the server itself
    answers ABORT for a run that is not paused (``NotPausedError``, as Prefect raises); a
    run that does not exist makes it fail with a 500, told apart by reading the run."""
    async with prefect_api() as client:
        try:
            response = await client.resume_flow_run(flow_run_id, run_input=run_input)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code < 500:
                raise
            await client.read_flow_run(flow_run_id)  # ObjectNotFound when it is gone
            raise
    if response.status == SetStateStatus.ABORT:
        raise NotPausedError("Cannot resume a run that isn't paused!")
    if response.status == SetStateStatus.REJECT:
        if response.state and response.state.type == StateType.FAILED:
            raise FlowPauseTimeout("Flow run can no longer be resumed.")
        reason = getattr(response.details, "reason", None)
        raise RuntimeError(f"Cannot resume this run: {reason}")
