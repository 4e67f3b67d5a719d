"""An in-process worker: runs conversation flow runs as asyncio tasks of one long-lived process.

``serve()`` and process workers start a new Python process per flow run — and a resumed run is
a new flow-run start. Importing Prefect and Parley costs ~1.5 s of CPU per start, so on a small
machine ten conversations waking at once queue for tens of seconds. Conversations are I/O-bound
(database, provider HTTP), so here one process runs them all: a resumed run starts in
milliseconds after the poll that finds it.

It claims runs the way Prefect's runner does (propose Pending; another worker that wins the
race makes ours abort) and then drives them with Prefect's own flow engine, so states, task
caching, suspend/resume and the UI behave exactly as with ``serve``. The price: a crash of this
process takes all its runs down at once; their leases expire and the sweep reschedules them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
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
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import Abort, Pause
from prefect.flow_engine import run_flow_async
from prefect.states import Cancelled, Pending
from prefect.utilities.engine import propose_state

from deployments.engine import shared_engine, with_resolved_result_storage
from deployments.register import kick_dispatcher, register_deployments
from parley import executor
from parley.settings import Settings, get_settings
from tasks.runtime import get_runtime, stop_gracefully

log = logging.getLogger("parley.worker")
CANCELLATION_CHECK = timedelta(seconds=1)


class InProcessWorker:
    def __init__(self, settings: Settings, *, limit: int, poll_seconds: float) -> None:
        self.settings = settings
        self.limit = limit
        self.poll_seconds = poll_seconds
        self.active: dict[UUID, asyncio.Task[None]] = {}
        self.stopping = asyncio.Event()
        self.flows: dict[UUID, Flow[..., Any]] = {}
        self._next_cancellation_check = datetime.now(UTC)
        self._cancelled_since = datetime.now(UTC) - CANCELLATION_CHECK

    async def run(self) -> None:
        async with shared_engine():
            await self._serve()

    async def _serve(self) -> None:
        self.flows = await register_deployments(self.settings)
        await kick_dispatcher(self.flows)
        await with_resolved_result_storage(self.flows)
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
        await self._drain()

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
                self.active[run.id] = asyncio.create_task(self._execute(run))

    async def _claim(self, client: PrefectClient, run: FlowRun) -> bool:
        try:
            state = await propose_state(client, Pending(), flow_run_id=run.id)
        except Abort:
            return False
        return state.is_pending()

    async def _execute(self, run: FlowRun) -> None:
        try:
            assert run.deployment_id is not None
            flow = self.flows[run.deployment_id]
            await run_flow_async(flow, flow_run=run, parameters=run.parameters, return_type="state")
        except (Pause, Abort):
            pass  # suspended (or taken over): the engine has already reported the state
        except Exception:
            log.exception("flow run %s raised", run.id)
        finally:
            self.active.pop(run.id, None)

    async def _honour_cancellations(self, client: PrefectClient) -> None:
        """A run cancelled in the Prefect UI goes to Cancelling; like Prefect's own runner we
        watch for it, stop the run if it is ours, and finish the cancellation. A suspended run
        (no process holds it) goes straight to Cancelled: its conversation is ended too. Either
        way the conversation is ``cancelled`` and nothing more is sent."""
        now = datetime.now(UTC)
        if now < self._next_cancellation_check:
            return
        since, self._next_cancellation_check = self._cancelled_since, now + CANCELLATION_CHECK
        by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=list(self.flows)))
        cancelling = await client.read_flow_runs(
            deployment_filter=by_deployment,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING]))
            ),
            limit=50,
        )
        cancelled = await client.read_flow_runs(
            deployment_filter=by_deployment,
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLED])),
                end_time=FlowRunFilterEndTime(after_=since),
            ),
            limit=200,
        )
        for run in cancelling:
            await self._cancel(client, run)
        for run in cancelled:
            await self._end_conversation_of(run)
        self._cancelled_since = now - CANCELLATION_CHECK  # overlap: nothing slips between

    async def _cancel(self, client: PrefectClient, run: FlowRun) -> None:
        task = self.active.get(run.id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await self._end_conversation_of(run)
        await client.set_flow_run_state(
            run.id, Cancelled(message="cancelled; nothing more is sent"), force=True
        )
        log.info("flow run %s cancelled", run.id)

    async def _end_conversation_of(self, run: FlowRun) -> None:
        conversation_id = run.parameters.get("conversation_id")
        if isinstance(conversation_id, int):  # a no-op for a conversation already ended
            await executor.cancel(await get_runtime(), conversation_id, "cancelled in Prefect")

    async def _drain(self) -> None:
        """On shutdown, let running conversations reach their next wait (they suspend or
        finish); what does not finish in time is left to lease expiry and the sweep."""
        if self.active:
            log.info("waiting for %d running conversations", len(self.active))
            stop_gracefully()
            await asyncio.wait(list(self.active.values()), timeout=30)


def main() -> None:
    """Run the worker's event loop off the main thread: Prefect's flow engine then cannot
    replace our SIGTERM handling with its own (which would crash every in-process run), and the
    main thread turns SIGINT/SIGTERM into a graceful stop: hot runs suspend, then we exit."""
    logging.basicConfig(level=logging.INFO)
    settings = get_settings()
    worker = InProcessWorker(
        settings,
        limit=settings.worker_concurrency,
        poll_seconds=settings.worker_poll_seconds,
    )
    loop = asyncio.new_event_loop()
    failures: list[BaseException] = []

    def run_loop() -> None:
        try:
            loop.run_until_complete(worker.run())
        except BaseException as exc:
            failures.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run_loop, name="parley-worker-loop")
    thread.start()

    def request_stop(_signum: int, _frame: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(worker.stopping.set)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while thread.is_alive():
        thread.join(0.5)
    if failures:
        raise SystemExit(f"worker failed: {failures[0]!r}")


if __name__ == "__main__":
    main()
