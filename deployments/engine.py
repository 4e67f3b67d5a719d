"""What the in-process worker shares between the flow runs of its process, and why.

Prefect's flow engine is written for one run per process, and three of its per-run set-ups
*block the event loop* — in a process that runs hundreds of conversations, every other
conversation's live turn waits while one run starts or ends (measured with ``--profile``):

* a thread of its own per deployment run, with its own event loop, events websocket and API
  client, to notice an external suspension; the engine waits synchronously until it is ready
  (~60 ms) and joins it when the run ends (up to 2 s, ~140 ms seen): replaced by **one**
  observer of Prefect's own kind (``FlowRunSuspendingObserver`` watches many runs) on the
  worker's loop;
* a synchronous API call for the server's default result storage at each run start (~37 ms
  with its client): resolved once, asynchronously, when the worker starts;
* a new API client per run (~28 ms each, most of it loading the CA bundle into a TLS context):
  the worker's runs share one ``AsyncClientContext``, which ``get_client()`` and the engine
  reuse on the same loop.

Outside the worker (tests calling the flow, ``serve``) nothing here applies.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect._flow_run_suspension import FlowRunSuspensionRequest
from prefect._internal.observers import FlowRunSuspendingObserver
from prefect.client.schemas.objects import State
from prefect.context import AsyncClientContext
from prefect.results import aget_default_result_storage

log = logging.getLogger("parley.worker")
_prefect_flow_engine: Any = importlib.import_module("prefect.flow_engine")
"""The engine module, whose name the engine looks the observer up by (patched while serving)."""


@contextlib.asynccontextmanager
async def shared_engine() -> AsyncIterator[None]:
    """One API client and one suspension observer for every run started inside."""
    async with AsyncClientContext(), _one_suspension_observer():
        yield


async def with_resolved_result_storage(flows: dict[UUID, Flow[..., Any]]) -> None:
    """Give each flow the storage Prefect would pick (the server's default block, else the
    local path), so no run start asks the server again. Changing the server's default takes
    effect when the worker restarts. Set on copies, as the attribute: ``with_options`` only
    takes saved blocks, and the local default is not one."""
    storage = await aget_default_result_storage()
    for deployment_id, flow in flows.items():
        if flow.result_storage is None:
            resolved = flows[deployment_id] = flow.with_options()
            resolved.result_storage = storage


@contextlib.asynccontextmanager
async def _one_suspension_observer() -> AsyncIterator[None]:
    original = _prefect_flow_engine.observe_flow_run_suspension
    async with FlowRunSuspendingObserver(on_suspended=_mark_requested) as observer:

        @contextlib.contextmanager
        def observe(
            flow_run_id: UUID, request: FlowRunSuspensionRequest, polling_interval: float = 10
        ) -> Iterator[None]:
            observer.add_in_flight_flow_run_id(flow_run_id)
            try:
                yield
            finally:
                observer.remove_in_flight_flow_run_id(flow_run_id)

        _prefect_flow_engine.observe_flow_run_suspension = observe
        try:
            yield
        finally:
            _prefect_flow_engine.observe_flow_run_suspension = original


def _mark_requested(flow_run_id: UUID, state: State) -> None:
    """The engine registered the run's request before observing it; it raises ``Pause`` at
    the run's next orchestration step, as with Prefect's own observer."""
    from prefect._flow_run_suspension import mark_flow_run_suspension_requested

    if not mark_flow_run_suspension_requested(flow_run_id, state):
        log.debug("suspension of flow run %s noticed after it ended", flow_run_id)
