"""The Prefect-native rollout, end to end: a work pool of type ``parley``, the deployments of
``prefect.yaml`` made with ``prefect deploy --all``, and ``prefect worker start --type parley``
as a subprocess running every conversation and dispatcher run in its own process.

The module builds its stack without ``python -m deployments.worker`` (which registers the
deployments itself): the deployments, the pool and the worker are what a Prefect user makes
with Prefect's own commands. Waits are polls with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType, WorkerStatus
from prefect.states import Cancelling

from devkit.fakes.recording_endpoint import RecordingEndpoint
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.stack.demo import EMAIL_PROMPT, GREETING
from devkit.stack.processes import Process, Stack, free_port
from tests.e2e.conftest import API_KEY, APP_SECRET, ONBOARDING, PHONE_NUMBER_ID, ROOT, E2EStack
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e
HOT_WAIT = 6.0  # long enough to cancel a run while it is hot, short enough to see it suspend


class WorkerTypeStack:
    """A webhook, the fakes and a ``prefect worker start --type parley`` subprocess."""

    def __init__(self, e2e: E2EStack, pool: str) -> None:
        self.e2e = e2e
        self.pool = pool

    @property
    def worker(self) -> Process:
        return self.e2e.stack.processes["worker"]

    def prefect(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            cwd=ROOT,
            env={**os.environ, **self.e2e.stack.env, "PARLEY_PROJECT_DIR": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def deploy(self, directory: Path) -> None:
        """prefect.yaml as shipped, with this stack's pool and deployment names (the session's
        Prefect server is shared with other stacks)."""
        project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
        for deployment in project["deployments"]:
            deployment["name"] = self.e2e.name
            deployment["work_pool"]["name"] = self.pool
        prefect_file = directory / "prefect.yaml"
        prefect_file.write_text(yaml.safe_dump(project))
        self.prefect("deploy", "--all", "--prefect-file", str(prefect_file))

    def start_worker(self, extra_env: dict[str, str] | None = None) -> Process:
        command = [sys.executable, "-m", "prefect", "worker", "start"]
        args = ["--pool", self.pool, "--type", "parley", "--limit", "10", "--name", self.e2e.name]
        return self.e2e.stack.spawn("worker", [*command, *args], extra_env)

    async def wait_for_worker_online(self, timeout: float = 120) -> None:
        async def online() -> bool:
            async with get_client() as client:
                workers = await client.read_workers_for_work_pool(self.pool)
            return any(w.name == self.e2e.name and w.status == WorkerStatus.ONLINE for w in workers)

        await _until(online, timeout, f"worker {self.e2e.name} never came online", self.worker)


async def _until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    message: str,
    process: Process | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        if process is not None and not process.alive():
            raise AssertionError(f"{message}: {process.name} exited\n{process.tail(60)}")
        await asyncio.sleep(0.2)
    raise AssertionError(f"{message}\n{process.tail(60) if process else ''}")


async def _read_run(flow_run_id: str) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(UUID(flow_run_id))


async def _wait_for_run_state(
    stack: WorkerTypeStack, flow_run_id: str, wanted: StateType
) -> FlowRun:
    run: FlowRun | None = None

    async def reached() -> bool:
        nonlocal run
        run = await _read_run(flow_run_id)
        return run.state is not None and run.state.type == wanted

    await _until(reached, 60, f"run {flow_run_id} never reached {wanted}", stack.worker)
    assert run is not None
    return run


async def _started_again_after_suspending(flow_run_id: str) -> bool:
    """The same flow run went Paused, then Running again (a resume, not a new run)."""
    async with get_client() as client:
        states = await client.read_flow_run_states(UUID(flow_run_id))
    kinds = [state.type for state in sorted(states, key=lambda state: state.timestamp)]
    return StateType.PAUSED in kinds and StateType.RUNNING in kinds[kinds.index(StateType.PAUSED) :]


def _ran_here(run: FlowRun, stack: WorkerTypeStack) -> None:
    """Submitted by this worker of type parley from its pool, and executed in its process."""
    assert run.work_pool_name == stack.pool
    assert run.labels.get("prefect.worker.type") == "parley"
    assert run.labels.get("prefect.worker.name") == stack.e2e.name
    assert run.infrastructure_pid == str(stack.worker.popen.pid)


@pytest.fixture(scope="module")
def worker_type_stack(
    prefect_server: str, database_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerTypeStack]:
    name = f"wt-{uuid.uuid4().hex[:6]}"
    directory = tmp_path_factory.mktemp(name)
    db_url = database_factory("postgresql")
    webhook_port = free_port()
    crm = RecordingEndpoint().start()
    fake = FakeWhatsAppAPI(
        access_token="test-token",
        phone_number_id=PHONE_NUMBER_ID,
        webhook_url=f"http://127.0.0.1:{webhook_port}/webhooks/whatsapp",
        app_secret=APP_SECRET,
    )
    fake.start()
    env = {
        "PARLEY_DATABASE_URL": db_url,
        "PARLEY_DATA_DIR": str(directory),
        "PARLEY_WHATSAPP_API_URL": fake.api_url,
        "PARLEY_WHATSAPP_ACCESS_TOKEN": "test-token",
        "PARLEY_WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "PARLEY_WHATSAPP_APP_SECRET": APP_SECRET,
        "PARLEY_WHATSAPP_VERIFY_TOKEN": "test-verify-token",
        "PARLEY_DEFAULT_CAMPAIGN": str(ONBOARDING),
        "CRM_URL": crm.url,
        "PARLEY_CONVERSATION_DEPLOYMENT": f"conversation/{name}",
        "PARLEY_DISPATCHER_DEPLOYMENT": f"dispatcher/{name}",
        "PARLEY_DISPATCHER_LIMIT": f"parley-dispatcher-{name}",
        "PARLEY_DISPATCHER_INTERVAL_SECONDS": "30",
        "PARLEY_DISPATCHER_TICK_SECONDS": "0.5",
        "PARLEY_API_KEYS": API_KEY,
        "PARLEY_HOT_WAIT_SECONDS": str(HOT_WAIT),
        "PARLEY_LEASE_SECONDS": "3",
        "PARLEY_SEND_RECONCILE_SECONDS": "10",
        "PARLEY_RESUME_RETRY_SECONDS": "30",
    }
    stack = Stack(directory, env=dict(env))
    stack.use_prefect_api(prefect_server, Path(os.environ["PREFECT_HOME"]))
    e2e = E2EStack(name, db_url, env, fake, crm, stack, webhook_port)
    handle = WorkerTypeStack(e2e, pool=f"parley-{name}")
    try:
        handle.prefect("work-pool", "create", handle.pool, "--type", "parley")
        handle.deploy(directory)
        handle.start_worker()
        asyncio.run(handle.wait_for_worker_online())
        stack.start_webhook("127.0.0.1", webhook_port)
        yield handle
    finally:
        e2e.stop()


async def test_the_pool_was_created_with_the_parley_worker_type_and_its_job_template(
    worker_type_stack: WorkerTypeStack,
) -> None:
    async with get_client() as client:
        pool = await client.read_work_pool(worker_type_stack.pool)
        limit = await client.read_global_concurrency_limit_by_name(
            worker_type_stack.e2e.env["PARLEY_DISPATCHER_LIMIT"]
        )
    assert pool.type == "parley"
    assert "job_configuration" in pool.base_job_template
    assert limit.limit == 1  # created by the worker: prefect deploy does not make limits


async def test_a_conversation_replies_suspends_and_resumes_in_the_workers_own_process(
    worker_type_stack: WorkerTypeStack,
) -> None:
    stack = worker_type_stack
    user = stack.e2e.user("Ria")
    assert await user.say("Hi", timeout=90) == [GREETING]
    detail = await stack.e2e.wait_for_status(user, "suspended", timeout=60)
    first = await _wait_for_run_state(stack, detail["flow_run_id"], StateType.PAUSED)
    _ran_here(first, stack)

    assert await user.say("Ria", timeout=90) == [EMAIL_PROMPT.format(name="Ria")]
    resumed = await _read_run(detail["flow_run_id"])
    assert await _started_again_after_suspending(detail["flow_run_id"])
    _ran_here(resumed, stack)
    assert stack.e2e.fake.texts_to(user.phone) == [GREETING, EMAIL_PROMPT.format(name="Ria")]


async def test_the_dispatcher_runs_in_the_worker(worker_type_stack: WorkerTypeStack) -> None:
    """The worker kicks a dispatcher run at start; it runs in-process like a conversation."""
    stack = worker_type_stack
    running: list[FlowRun] = []

    async def a_dispatcher_is_running() -> bool:
        async with get_client() as client:
            running[:] = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["dispatcher"])),
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=[stack.e2e.name])
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
                ),
            )
        return bool(running)

    await _until(a_dispatcher_is_running, 90, "no dispatcher run is running", stack.worker)
    _ran_here(running[0], stack)


async def test_a_hot_run_cancelled_through_the_prefect_api_ends_its_conversation(
    worker_type_stack: WorkerTypeStack,
) -> None:
    stack = worker_type_stack
    user = stack.e2e.user("Sol")
    assert await user.say("Hi", timeout=90) == [GREETING]
    detail = await stack.e2e.wait_for_status(user, "hot", timeout=30)
    async with get_client() as client:  # what the UI's Cancel button does
        await client.set_flow_run_state(UUID(detail["flow_run_id"]), Cancelling(), force=True)
    await stack.e2e.wait_for_status(user, "cancelled", timeout=60)
    run = await _wait_for_run_state(stack, detail["flow_run_id"], StateType.CANCELLED)
    _ran_here(run, stack)
    # The run is over (Cancelled is final): whatever it had left to say is never sent.
    assert stack.e2e.fake.texts_to(user.phone) == [GREETING]
    assert (await stack.e2e.conversation_of(user))["status"] == "cancelled"


async def test_sigterm_suspends_hot_conversations_and_a_new_worker_resumes_them(
    worker_type_stack: WorkerTypeStack,
) -> None:
    """A rollout stops the worker with SIGTERM: the hot run suspends (it would otherwise stay
    hot for 10 minutes), the worker exits 0, the next worker carries the conversation on."""
    stack = worker_type_stack
    stack.e2e.stack.terminate("worker", grace=60)
    stack.start_worker(extra_env={"PARLEY_HOT_WAIT_SECONDS": "600"})
    await stack.wait_for_worker_online()
    user = stack.e2e.user("Tam")
    assert await user.say("Hi", timeout=90) == [GREETING]
    detail = await stack.e2e.wait_for_status(user, "hot", timeout=30)

    assert stack.e2e.stack.terminate("worker", grace=60) == 0
    await stack.e2e.wait_for_status(user, "suspended", timeout=30)
    suspended = await _read_run(detail["flow_run_id"])
    assert suspended.state is not None and suspended.state.type == StateType.PAUSED

    stack.start_worker()
    await stack.wait_for_worker_online()
    assert await user.say("Tam", timeout=90) == [EMAIL_PROMPT.format(name="Tam")]
    assert await _started_again_after_suspending(detail["flow_run_id"])
    _ran_here(await _read_run(detail["flow_run_id"]), stack)


async def test_a_parley_worker_started_while_prefect_is_down_waits_then_comes_online(
    worker_type_stack: WorkerTypeStack, prefect_server: str
) -> None:
    """Prefect's own worker gives up after a few minutes of an unreachable API, and a process
    manager would restart it in a loop: ours waits, saying so, and comes online once Prefect
    answers (its API here is a proxy in front of the session's server, closed at first)."""
    stack = worker_type_stack
    target = urlsplit(prefect_server).port
    assert target is not None
    proxy = TcpProxy(target, free_port())
    api_url = f"http://127.0.0.1:{proxy.listen_port}/api"
    try:
        stack.e2e.stack.terminate("worker", grace=60)
        worker = stack.start_worker(extra_env={"PREFECT_API_URL": api_url})

        async def said_it_retries() -> bool:
            log = worker.log_path.read_text(errors="replace")
            return f"Prefect API at {api_url} unreachable" in log and "retrying in 5 s" in log

        await _until(said_it_retries, 90, "the worker never said it waits for Prefect", worker)
        assert worker.alive()
        proxy.up()
        await stack.wait_for_worker_online()
        user = stack.e2e.user("Uma")
        assert await user.say("Hi", timeout=90) == [GREETING]
    finally:
        stack.e2e.stack.terminate("worker", grace=60)
        proxy.close()
        stack.start_worker()


def test_the_worker_type_is_found_through_prefects_entry_point() -> None:
    """What ``prefect work-pool create --type parley`` and ``prefect worker start`` rely on."""
    from prefect.workers.base import BaseWorker

    from deployments.prefect_worker import ParleyWorker

    assert "parley" in BaseWorker.get_all_available_worker_types()
    assert BaseWorker.get_worker_class_from_type("parley") is ParleyWorker


def test_a_deployments_entrypoint_names_the_flow_the_worker_imports() -> None:
    """prefect.yaml's path form, the module form, and a path only the deploying host had (the
    flow's name then picks Parley's own flow); anything else is refused, not guessed."""
    from deployments.worker import UnknownFlow, _import_flow
    from flows.conversation import conversation
    from flows.dispatcher import dispatcher

    assert _import_flow("flows/conversation.py:conversation", "conversation") is conversation
    assert _import_flow("flows.dispatcher:dispatcher", "dispatcher") is dispatcher
    assert _import_flow("/srv/old/flows/conversation.py:conversation", "conversation") is (
        conversation
    )
    with pytest.raises(UnknownFlow):
        _import_flow("elsewhere/report.py:report", "report")
