"""The ``parley`` Prefect worker type: Prefect's worker, running flow runs in-process.

    prefect work-pool create parley --type parley
    PARLEY_PROJECT_DIR=$PWD prefect deploy --all      # prefect.yaml
    prefect worker start --pool parley

Everything a Prefect worker does comes from ``BaseWorker``: it registers with its pool and
heartbeats, polls the pool's queues, respects the pool's concurrency limit and ``--limit``,
claims each run (Pending, then Submitting) and labels it with the worker. Only *how a run is
executed* differs from a process worker: no process per run — the run is driven by Prefect's
flow engine as an asyncio task of this process (``deployments.worker.InProcessRuns``, the
same path as ``python -m deployments.worker``), so a resumed conversation starts in
milliseconds instead of paying ~1.5 s of CPU for a new Python process.

What follows from running in-process:

* the flow is the deployment's entrypoint imported as a module of the worker's own
  environment (``flows/conversation.py:conversation`` → ``flows.conversation``): the pull
  steps of ``prefect.yaml`` are not run and a job variable's ``env`` / ``command`` do not apply
  (they would be per-process settings); restart the worker to run new code, as with ``serve``;
* runs go on an event loop in a thread of its own: Prefect's flow engine takes SIGTERM over
  only on the main thread, where it would end every in-process run; the main thread turns
  SIGINT/SIGTERM into a graceful stop instead — no new claims, hot runs suspend (up to 30 s),
  then the worker exits; a second signal stops at once (runs left running are rescheduled by
  the sweep when their lease expires);
* a run cancelled in the UI goes Cancelling: the worker stops its task, ends the conversation
  as ``cancelled`` and marks the run Cancelled; a suspended run cancelled (straight to
  Cancelled) has its conversation ended too;
* resumed runs are picked up every ``PARLEY_WORKER_POLL_SECONDS`` (Prefect's own poll,
  ``PREFECT_WORKER_QUERY_SECONDS``, keeps running); without ``--limit`` a worker runs at most
  ``PARLEY_WORKER_CONCURRENCY`` runs at once;
* at start it creates the dispatcher's one-slot global concurrency limit if missing
  (``PARLEY_DISPATCHER_LIMIT``) and starts a dispatcher run of its pool at once.

The module is Prefect's entry point (``prefect.collections`` in pyproject.toml), so every
``prefect`` command that lists worker types and the Prefect server import it: Parley's runtime
is imported only when a worker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio.abc
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from deployments.worker import InProcessRuns


class ParleyJobConfiguration(BaseJobConfiguration):
    """Nothing to configure per run: runs share the worker's process and its environment."""


class ParleyVariables(BaseVariables):
    pass


class ParleyWorkerResult(BaseWorkerResult):
    """``identifier`` is the flow run id; ``status_code`` 0 (the engine reported the state)."""


class ParleyWorker(BaseWorker[ParleyJobConfiguration, ParleyVariables, ParleyWorkerResult]):
    type = "parley"
    job_configuration = ParleyJobConfiguration
    job_configuration_variables = ParleyVariables
    _description = (
        "Runs Parley's conversation and dispatcher flow runs in-process: one long-lived "
        "process drives them all with Prefect's flow engine (no process per start or resume)."
    )
    _display_name = "Parley (in-process)"
    _documentation_url = "https://github.com/parley/parley#a-prefect-worker-type"

    def __init__(
        self,
        work_pool_name: str,
        work_queues: list[str] | None = None,
        name: str | None = None,
        prefetch_seconds: float | None = None,
        create_pool_if_not_found: bool = True,
        limit: int | None = None,
        heartbeat_interval_seconds: int | None = None,
        *,
        base_job_template: dict[str, Any] | None = None,
    ) -> None:
        from prefect_adapter.composition import get_settings

        self.settings = get_settings()
        super().__init__(
            work_pool_name,
            work_queues,
            name,
            prefetch_seconds,
            create_pool_if_not_found,
            limit if limit is not None else self.settings.worker_concurrency,
            heartbeat_interval_seconds,
            base_job_template=base_job_template,
        )
        self._runs: InProcessRuns | None = None
        self._stopping = False
        self._services: list[asyncio.Task[None]] = []
        self._main: asyncio.Task[None] | None = None

    @property
    def runs(self) -> InProcessRuns:
        if self._runs is None:
            raise RuntimeError("the worker has not started")
        return self._runs

    async def start(
        self,
        run_once: bool = False,
        with_healthcheck: bool = False,
        printer: Callable[..., None] = print,
    ) -> None:
        """Prefect's worker loops and the runs, on an event loop off the main thread."""
        from deployments.worker import run_off_the_main_thread

        await run_off_the_main_thread(
            lambda: self._serve(run_once, with_healthcheck, printer),
            lambda loop: loop.call_soon_threadsafe(self._request_stop, printer),
        )

    async def _serve(
        self, run_once: bool, with_healthcheck: bool, printer: Callable[..., None]
    ) -> None:
        from deployments.engine import shared_engine
        from deployments.worker import InProcessRuns
        from prefect_adapter.client import wait_for_prefect_api

        self._runs = InProcessRuns()
        parley_logs = logging.getLogger("parley")
        if parley_logs.level == logging.NOTSET:  # Prefect's root logger shows only warnings
            parley_logs.setLevel(logging.INFO)

        async def start_when_reachable() -> None:
            # Prefect's worker gives up after a few minutes of an unreachable API at start; a
            # process manager would restart it in a loop. Wait here, saying so, instead.
            await wait_for_prefect_api(parley_logs.getChild("worker"))
            async with shared_engine():
                await BaseWorker.start(
                    self, run_once=run_once, with_healthcheck=with_healthcheck, printer=printer
                )

        self._main = asyncio.create_task(start_when_reachable())
        try:
            await self._main
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            printer(f"Worker {self.name!r} stopped!")

    def _request_stop(self, printer: Callable[..., None]) -> None:
        """First signal: stop claiming, let hot runs suspend, exit. Second: exit now."""
        if self._main is None:
            return
        if self._stopping:
            printer("Stopping now; runs still running are left to the sweep.")
            self._main.cancel()
            return
        self._stopping = True
        printer(f"Stopping worker {self.name!r}: running conversations suspend first...")
        self._services.append(asyncio.create_task(self._drain_then_stop()))

    async def _drain_then_stop(self) -> None:
        await self.runs.drain()
        if self._main is not None:
            self._main.cancel()

    async def setup(self) -> None:
        await super().setup()
        try:
            await self._prepare_parley()
        except Exception:  # the API may be briefly away; the schedule starts the dispatcher
            self._logger.warning("could not prepare Parley's limits and dispatcher", exc_info=True)
        self._services += [
            asyncio.create_task(self._every(self.settings.worker_poll_seconds, self._poll)),
            asyncio.create_task(self._every(1.0, self._honour_cancellations)),
        ]

    async def teardown(self, *exc_info: Any) -> None:
        for service in self._services:
            service.cancel()
        for service in self._services:
            with contextlib.suppress(asyncio.CancelledError):
                await service
        self._services.clear()
        await super().teardown(*exc_info)

    async def _prepare_parley(self) -> None:
        from prefect.client.schemas.filters import (
            FlowFilter,
            FlowFilterName,
            WorkPoolFilter,
            WorkPoolFilterName,
        )

        from deployments.register import ensure_concurrency_limit, kick_dispatcher
        from flows.dispatcher import dispatcher

        await ensure_concurrency_limit(self.settings.dispatcher_limit, limit=1)
        deployments = await self.client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[dispatcher.name])),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
        )
        await kick_dispatcher([deployment.id for deployment in deployments])

    async def _every(self, seconds: float, work: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            if not self._has_successfully_synced:
                continue
            try:
                await work()
            except Exception:  # the API may be briefly unavailable; keep going
                self._logger.warning("%s failed", getattr(work, "__name__", work), exc_info=True)

    async def _poll(self) -> None:
        """Resumed conversations come back as scheduled runs: find them within
        PARLEY_WORKER_POLL_SECONDS, not Prefect's 10 s default query interval."""
        await self.get_and_submit_flow_runs()

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        if self._stopping:
            return []
        return await super().get_and_submit_flow_runs()

    async def _honour_cancellations(self) -> None:
        await self.runs.honour_cancellations(self.client, work_pool_name=self._work_pool_name)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ParleyJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ParleyWorkerResult:
        """Claimed (Submitting) by ``BaseWorker``; runs here until it finishes, suspends or is
        cancelled. Holds one slot of ``--limit`` meanwhile; a suspended run holds none."""
        flow = await self.runs.flow_for(self.client, flow_run)
        if task_status is not None:
            task_status.started(os.getpid())  # the run's "infrastructure": this process
        await self.runs.execute(flow_run, flow)
        return ParleyWorkerResult(identifier=str(flow_run.id), status_code=0)

    async def _cancel_run(self, flow_run_id: UUID) -> None:
        """Prefect's cancellation observer, for a run cancelled while being submitted."""
        run = await self.client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_cancelling():
            await self.runs.cancel(self.client, run)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: ParleyJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Runs share this process: a run is stopped by cancelling its task, never killed."""
        raise NotImplementedError("in-process runs are cancelled, not killed")
