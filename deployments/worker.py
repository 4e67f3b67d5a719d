"""Running conversation flow runs in-process: as asyncio tasks of one long-lived process.

``serve()`` and process workers start a new Python process per flow run — and a resumed run is
a new flow-run start. Importing Prefect and Parley costs ~1.5 s of CPU per start, so on a small
machine ten conversations waking at once queue for tens of seconds. Conversations are I/O-bound
(database, provider HTTP), so here one process runs them all: a resumed run starts in
milliseconds after the poll that finds it.

Two front doors share one execution path (``InProcessRuns``: which flow a run executes, driving
it with Prefect's own flow engine, stopping it when it is cancelled in Prefect):

* ``prefect worker start --pool parley`` — the ``parley`` Prefect worker type
  (``deployments.prefect_worker``), for deployments made with ``prefect deploy``;
* ``python -m deployments.worker`` (``InProcessWorker`` below) — the shortcut that registers
  the two deployments itself and polls them by id: one command on a fresh server.

Either way runs are claimed the way Prefect's runner does (propose Pending; another worker that
wins the race makes ours abort), so states, task caching, suspend/resume and the UI behave
exactly as with ``serve``. The price: a crash of the process takes all its runs down at once;
their leases expire and the sweep reschedules them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import Abort, Pause
from prefect.flow_engine import run_flow_async
from prefect.states import Cancelled, Pending
from prefect.utilities.engine import propose_state

from deployments.engine import shared_engine, with_resolved_result_storage
from deployments.register import kick_dispatcher, register_deployments
from flows.conversation import conversation
from flows.dispatcher import dispatcher
from parley.conversation import executor
from parley.settings import Settings
from prefect_adapter.client import unreachable, wait_for_prefect_api
from prefect_adapter.composition import get_runtime, get_settings, stop_gracefully

log = logging.getLogger("parley.worker")
CANCELLATION_CHECK = timedelta(seconds=1)
DRAIN_SECONDS = 30.0
KNOWN_FLOWS: dict[str, Flow[..., Any]] = {f.name: f for f in (conversation, dispatcher)}
"""What a deployment of Parley runs, by flow name: the fallback when its entrypoint is a path
this process cannot import as a module."""


class UnknownFlow(Exception):
    """A flow run whose deployment names a flow this worker cannot run in-process."""


class InProcessRuns:
    """The flow runs of this process, each an asyncio task on the loop that created them.

    Call everything from one event loop, inside ``deployments.engine.shared_engine()`` (one API
    client and one suspension observer for all runs)."""

    def __init__(self, flows: dict[UUID, Flow[..., Any]] | None = None) -> None:
        self.active: dict[UUID, asyncio.Task[None]] = {}
        self._by_deployment: dict[UUID, Flow[..., Any]] = dict(flows or {})
        self._by_entrypoint: dict[str, Flow[..., Any]] = {}
        self._cancelled_since = datetime.now(UTC) - CANCELLATION_CHECK

    async def adopt(self, flows: dict[UUID, Flow[..., Any]]) -> None:
        """Deployments whose flow is known up front (the ones ``register`` just applied)."""
        resolved = dict(flows)
        await with_resolved_result_storage(resolved)
        self._by_deployment.update(resolved)

    async def flow_for(self, client: PrefectClient, run: FlowRun) -> Flow[..., Any]:
        """The flow a run executes: its deployment's entrypoint imported as a module of this
        process (``flows/conversation.py:conversation`` → ``flows.conversation``), with the
        result storage resolved once. The code is what this process imported at start, as
        with ``serve()``: restart the worker to run new code."""
        if run.deployment_id is None:
            raise UnknownFlow(f"flow run {run.id} has no deployment")
        known = self._by_deployment.get(run.deployment_id)
        if known is not None:
            return known
        deployment = await client.read_deployment(run.deployment_id)
        entrypoint = deployment.entrypoint or ""
        flow = self._by_entrypoint.get(entrypoint)
        if flow is None:
            api_flow = await client.read_flow(deployment.flow_id)
            resolved = {run.deployment_id: _import_flow(entrypoint, api_flow.name)}
            await with_resolved_result_storage(resolved)
            flow = self._by_entrypoint[entrypoint] = resolved[run.deployment_id]
        return flow

    async def execute(self, run: FlowRun, flow: Flow[..., Any]) -> None:
        """Drive a claimed (Pending) run with Prefect's flow engine until it finishes, suspends
        or is cancelled here; the engine reports its states."""
        task = asyncio.create_task(self._drive(run, flow), name=f"flow-run-{run.id}")
        self.active[run.id] = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller is being cancelled, not just this run
        finally:
            if self.active.get(run.id) is task:
                del self.active[run.id]

    async def _drive(self, run: FlowRun, flow: Flow[..., Any]) -> None:
        try:
            await run_flow_async(flow, flow_run=run, parameters=run.parameters, return_type="state")
        except (Pause, Abort):
            pass  # suspended (or taken over): the engine has already reported the state
        except Exception:
            log.exception("flow run %s raised", run.id)

    async def honour_cancellations(
        self,
        client: PrefectClient,
        *,
        deployment_ids: list[UUID] | None = None,
        work_pool_name: str | None = None,
    ) -> None:
        """A run cancelled in the Prefect UI goes to Cancelling; like Prefect's own runner we
        watch for it, stop the run if it is ours, and finish the cancellation. A suspended run
        (no process holds it) goes straight to Cancelled: its conversation is ended too. Either
        way the conversation is ``cancelled`` and nothing more is sent."""
        now = datetime.now(UTC)
        since = self._cancelled_since
        scope: dict[str, Any] = {}
        if deployment_ids is not None:
            scope["deployment_filter"] = DeploymentFilter(
                id=DeploymentFilterId(any_=deployment_ids)
            )
        if work_pool_name is not None:
            scope["work_pool_filter"] = WorkPoolFilter(
                name=WorkPoolFilterName(any_=[work_pool_name])
            )
        cancelling = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING]))
            ),
            limit=50,
            **scope,
        )
        cancelled = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLED])),
                end_time=FlowRunFilterEndTime(after_=since),
            ),
            limit=200,
            **scope,
        )
        for run in cancelling:
            await self.cancel(client, run)
        for run in cancelled:  # cancelled by someone else (another worker, the sweep)
            if await self._stop(run.id):
                # Prefect's engine, stopped here, forces Crashed over the Cancelled it had.
                message = run.state.message if run.state else None
                await client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
            await end_conversation_of(run)
        self._cancelled_since = now - CANCELLATION_CHECK  # overlap: nothing slips between

    async def cancel(self, client: PrefectClient, run: FlowRun) -> None:
        await self._stop(run.id)
        await end_conversation_of(run)
        await client.set_flow_run_state(
            run.id, Cancelled(message="cancelled; nothing more is sent"), force=True
        )
        log.info("flow run %s cancelled", run.id)

    async def _stop(self, run_id: UUID) -> bool:
        """Whether this worker was running it (and has stopped it)."""
        task = self.active.get(run_id)
        if task is None:
            return False
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return True

    async def drain(self, timeout: float = DRAIN_SECONDS) -> None:
        """On shutdown, let running conversations reach their next wait (they suspend or
        finish); what does not finish in time is left to lease expiry and the sweep."""
        if self.active:
            log.info("waiting for %d running conversations", len(self.active))
            stop_gracefully()
            await asyncio.wait(list(self.active.values()), timeout=timeout)
        else:
            stop_gracefully()


async def end_conversation_of(run: FlowRun) -> None:
    conversation_id = run.parameters.get("conversation_id")
    if isinstance(conversation_id, int):  # a no-op for a conversation already ended
        await executor.mark_cancelled(await get_runtime(), conversation_id, "cancelled in Prefect")


def _import_flow(entrypoint: str, flow_name: str) -> Flow[..., Any]:
    path, _, attribute = entrypoint.rpartition(":")
    module = path.removesuffix(".py").replace("/", ".") if path.endswith(".py") else path
    try:
        candidate = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        log.debug("entrypoint %r is not importable here (%s)", entrypoint, exc)
        candidate = KNOWN_FLOWS.get(flow_name)
    if not isinstance(candidate, Flow):
        raise UnknownFlow(f"cannot run {entrypoint!r} (flow {flow_name!r}) in-process")
    return candidate


class InProcessWorker:
    """``python -m deployments.worker``: registers the deployments, polls them by id."""

    def __init__(self, settings: Settings, *, limit: int, poll_seconds: float) -> None:
        self.settings = settings
        self.limit = limit
        self.poll_seconds = poll_seconds
        self.runs = InProcessRuns()
        self.stopping = asyncio.Event()
        self.flows: dict[UUID, Flow[..., Any]] = {}
        self._next_cancellation_check = datetime.now(UTC)

    @property
    def active(self) -> dict[UUID, asyncio.Task[None]]:
        return self.runs.active

    async def run(self) -> None:
        """Started while Prefect is down, it waits for the API (a log line every try) rather
        than exit: a process manager would only restart it in a loop."""
        if not await wait_for_prefect_api(log, self.stopping):
            return
        async with shared_engine():
            await self._serve()

    async def _prepare(self) -> bool:
        """Register the deployments and kick the dispatcher, waiting out an API that went
        away meanwhile. False if asked to stop while waiting."""
        while True:
            try:
                self.flows = await register_deployments(self.settings)
                await kick_dispatcher([d for d, flow in self.flows.items() if flow is dispatcher])
                await self.runs.adopt(self.flows)
                return True
            except Exception as exc:
                if not unreachable(exc):
                    raise
                if not await wait_for_prefect_api(log, self.stopping, after=exc):
                    return False

    async def _serve(self) -> None:
        if not await self._prepare():
            return
        log.info(
            "worker serving %s and %s in-process",
            self.settings.conversation_deployment,
            self.settings.dispatcher_deployment,
        )
        async with get_client() as client:
            while not self.stopping.is_set():
                try:
                    await self._submit_due_runs(client)
                    await self._honour_cancellations(client)
                except Exception:  # the API may be briefly unavailable; keep polling
                    log.exception("polling for scheduled runs failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.poll_seconds)
        await self.runs.drain()

    async def _submit_due_runs(self, client: PrefectClient) -> None:
        free = self.limit - len(self.active)
        if free <= 0:
            return
        runs = await client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(self.flows),
            scheduled_before=datetime.now(UTC) + timedelta(seconds=1),
            limit=free,
        )
        for run in runs:
            if run.id not in self.active and await self._claim(client, run):
                flow = await self.runs.flow_for(client, run)
                self.active[run.id] = asyncio.create_task(self.runs.execute(run, flow))

    async def _claim(self, client: PrefectClient, run: FlowRun) -> bool:
        try:
            state = await propose_state(client, Pending(), flow_run_id=run.id)
        except Abort:
            return False
        return state.is_pending()

    async def _honour_cancellations(self, client: PrefectClient) -> None:
        now = datetime.now(UTC)
        if now < self._next_cancellation_check:
            return
        self._next_cancellation_check = now + CANCELLATION_CHECK
        await self.runs.honour_cancellations(client, deployment_ids=list(self.flows))


async def run_off_the_main_thread(
    main: Callable[[], Coroutine[Any, Any, None]],
    request_stop: Callable[[asyncio.AbstractEventLoop], object],
) -> None:
    """Run ``main()`` on an event loop of its own thread: Prefect's flow engine installs its
    SIGTERM handler only from the main thread (``capture_sigterm``), where it would end every
    in-process run; here the main thread keeps SIGINT/SIGTERM and turns them into
    ``request_stop(loop)``: a graceful stop (hot runs suspend, then we exit)."""
    loop = asyncio.new_event_loop()
    failures: list[BaseException] = []

    def run_loop() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            failures.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run_loop, name="parley-worker-loop")
    thread.start()

    def on_signal() -> None:
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            request_stop(loop)

    here = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        here.add_signal_handler(signum, on_signal)
    try:
        await asyncio.to_thread(thread.join)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            here.remove_signal_handler(signum)
    if failures:
        raise SystemExit(f"worker failed: {failures[0]!r}")


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    settings = get_settings()
    worker = InProcessWorker(
        settings,
        limit=settings.worker_concurrency,
        poll_seconds=settings.worker_poll_seconds,
    )
    asyncio.run(
        run_off_the_main_thread(
            worker.run, lambda loop: loop.call_soon_threadsafe(worker.stopping.set)
        )
    )


if __name__ == "__main__":
    main()
