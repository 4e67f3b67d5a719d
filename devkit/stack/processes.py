"""Starting and stopping the local stack as real processes: Prefect server, worker, webhook.

Used by ``parley dev``, ``parley demo`` and the end-to-end tests, so all three run exactly what a
user runs. Each process logs to ``<data_dir>/logs/<name>.log``; ``stop()`` terminates them in
reverse order (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from parley.errors import ParleyError


class StackError(ParleyError):
    """A process of the stack did not start or did not become healthy in time."""


_QUIET_PORTS = range(20_000, 32_000)  # below Linux's ephemeral range (32768-60999)


def free_port() -> int:
    """A free port outside the ephemeral range: ports the OS hands to outgoing connections
    (hundreds, with Prefect clients around) can be taken between this call and the bind."""
    for _ in range(200):
        port = random.choice(_QUIET_PORTS)
        if port_is_free(port):
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def prefect_env(prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {
        "PREFECT_HOME": str(prefect_home.resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        # A killed dispatcher's concurrency slot is freed this soon after its lease lapses.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "5",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def api_is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, Process] = field(default_factory=dict)
    api_url: str | None = None

    @property
    def log_dir(self) -> Path:
        path = self.data_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Process:
        env = {**os.environ, **self.env, **(extra_env or {})}
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen(
            args,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        process = Process(name, popen, log_path)
        self.processes[name] = process
        return process

    def start_prefect_server(self, port: int, *, database_url: str | None = None) -> str:
        """``database_url``: Prefect's own database (its SQLite default locks up under
        concurrent load; PostgreSQL for anything beyond the demo)."""
        home = self.data_dir / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        api_url = f"http://127.0.0.1:{port}/api"
        self.env.update(prefect_env(home, api_url))
        if api_is_healthy(api_url):
            self.api_url = api_url
            return api_url
        process = self.spawn(
            "prefect-server",
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            {"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else None,
        )
        self._wait_until(lambda: api_is_healthy(api_url), process, timeout=120)
        self.api_url = api_url
        return api_url

    def use_prefect_api(self, api_url: str, prefect_home: Path) -> None:
        self.env.update(prefect_env(prefect_home, api_url))
        self.api_url = api_url

    def start_worker(
        self, name: str = "worker", extra_env: dict[str, str] | None = None
    ) -> Process:
        return self.spawn(name, [sys.executable, "-m", "deployments.worker"], extra_env)

    def wait_for_deployment(self, deployment: str, timeout: float = 90) -> None:
        flow, name = deployment.split("/", 1)
        url = f"{self.api_url}/deployments/name/{flow}/{name}"
        worker = self.processes.get("worker")

        def registered() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait_until(registered, worker, timeout=timeout)

    def start_webhook(
        self, host: str, port: int, extra_env: dict[str, str] | None = None
    ) -> Process:
        process = self.spawn(
            "webhook",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "webhook.app:app",
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            extra_env,
        )
        url = f"http://{host}:{port}/healthz"

        def healthy() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait_until(healthy, process, timeout=60)
        return process

    def kill(self, name: str) -> None:
        """SIGKILL a process and its children (the flow runs a worker started)."""
        process = self.processes.pop(name)
        if process.alive():
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)

    def terminate(self, name: str, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        process = self.processes.pop(name)
        if process.alive():
            os.killpg(process.popen.pid, signal.SIGTERM)
            try:
                process.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=5)
        return process.popen.returncode

    def stop(self, grace: float = 10.0) -> None:
        for name in reversed(list(self.processes)):
            self.terminate(name, grace)

    def _wait_until(self, ready: object, process: Process | None, *, timeout: float) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if process is not None and not process.alive():
                raise StackError(f"{process.name} exited early:\n{process.tail()}")
            time.sleep(0.25)
        tail = process.tail() if process else ""
        raise StackError(
            f"{process.name if process else 'service'} not ready in {timeout}s\n{tail}"
        )


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A stack whose owner is killed (a test run stopped with SIGKILL, a closed terminal) must
    not leave a server and a worker running: on Linux the kernel sends them SIGTERM."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
