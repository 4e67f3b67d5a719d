"""Parley's stack for the benchmark: the real Prefect server (PostgreSQL), the in-process
worker, the webhook — started by ``devkit.stack.dev.bring_up`` exactly as ``parley dev`` does,
on free ports, with the loopback Graph API and CRM running in the harness process.

A second webhook process on the same database serves the echo campaign for the replay figure
(``PARLEY_DEFAULT_CAMPAIGN`` is per webhook process), so one worker runs both campaigns.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.context import PARLEY_DB, Context, Plan
from bench.harness import Endpoint, FigureError, TimedFake
from bench.procs import CpuMeter
from bench.script import ECHO_YAML, ONBOARDING_YAML
from devkit.fakes.recording_endpoint import RecordingEndpoint
from devkit.stack.dev import RunningStack, bring_up
from devkit.stack.processes import StackError, free_port
from parley.settings import Settings, get_settings


@dataclass
class ParleyStack:
    running: RunningStack
    settings: Settings
    fake: TimedFake
    crm: RecordingEndpoint
    api: str
    onboarding: Endpoint
    echo: Endpoint
    log_offsets: dict[str, int]  # where this run starts in the worker's and webhook's logs

    def echo_ready(self) -> None:
        """The echo webhook starts with the stack but is awaited only by the replay figure,
        so its start-up overlaps the latency figure's unmeasured warm-up conversation."""
        url = self.echo.url.removesuffix("/webhooks/whatsapp") + "/healthz"
        _wait_healthy(self.running.stack.processes["webhook-echo"], url, "the echo webhook")

    @property
    def worker_pid(self) -> int:
        return self.running.stack.processes["worker"].popen.pid

    def meter(self, ctx: Context) -> CpuMeter:
        return ctx.meter({name: p.popen.pid for name, p in self.running.stack.processes.items()})


def worker_settings(plan: Plan) -> str:
    defaults = Settings()
    return (
        f"in-process, poll {defaults.worker_poll_seconds} s, concurrency "
        f"{defaults.worker_concurrency}, hot window {plan.hot_seconds} s, wake-up LISTEN/NOTIFY"
        f" (inbox poll {defaults.hot_poll_seconds} s fallback), Prefect runner/worker poll 1 s"
    )


def started(ctx: Context) -> ParleyStack:
    """Started on first use and kept for every Parley figure of the run; if it cannot start,
    the later Parley figures fail at once with the same reason instead of trying again."""
    if isinstance(ctx.parley, ParleyStack):
        return ctx.parley
    if isinstance(ctx.parley, FigureError):
        raise FigureError(f"not measured: {str(ctx.parley).splitlines()[0]}")
    try:
        return _start_stack(ctx)
    except FigureError as exc:
        ctx.parley = exc
        raise


def _start_stack(ctx: Context) -> ParleyStack:
    api = ctx.prefect_api()
    ctx.pg.recreate(PARLEY_DB)
    webhook_port, echo_port, graph_port, crm_port = (free_port() for _ in range(4))
    os.environ.update(
        {
            "PARLEY_DATA_DIR": str(ctx.data_dir),
            "PARLEY_DATABASE_URL": ctx.pg.asyncpg_url(PARLEY_DB),
            "PARLEY_HOT_WAIT_SECONDS": str(ctx.plan.hot_seconds),
            "PARLEY_WEBHOOK_HOST": "127.0.0.1",
            "PARLEY_WEBHOOK_PORT": str(webhook_port),
            "PARLEY_WHATSAPP_API_URL": f"http://127.0.0.1:{graph_port}/v21.0",
            "PARLEY_DEFAULT_CAMPAIGN": str(ONBOARDING_YAML),
            "CRM_URL": f"http://127.0.0.1:{crm_port}",
        }
    )
    get_settings.cache_clear()
    settings = get_settings()
    secret = settings.whatsapp_app_secret.get_secret_value()
    fake = TimedFake(
        host="127.0.0.1",
        port=graph_port,
        access_token=settings.whatsapp_access_token.get_secret_value(),
        phone_number_id=settings.whatsapp_phone_number_id,
        webhook_url=f"{settings.webhook_url}/webhooks/whatsapp",
        app_secret=secret,
    )
    fake.start()
    ctx.services.callback(fake.stop)
    crm = RecordingEndpoint(port=crm_port).start()
    ctx.services.callback(crm.stop)
    print(f"starting Parley (worker + webhook) on {PARLEY_DB}...", flush=True)
    started = time.monotonic()
    try:
        # Our fake and CRM already listen on the configured ports, so bring_up starts no
        # stand-ins of its own (fake_providers=None: "only where nothing answers").
        running = bring_up(settings, fake_providers=None)
    except StackError as exc:
        raise FigureError(f"Parley's stack did not start: {exc}") from exc
    ctx.services.callback(running.stop)
    offsets = {name: _size(running.stack.log_dir / f"{name}.log") for name in ("worker", "webhook")}
    if ctx.profile:
        _restart_profiled(ctx, running, settings)
    _start_echo_webhook(running, echo_port)
    ctx.report.settings["parley_worker"] = worker_settings(ctx.plan)
    print(f"  Parley up in {time.monotonic() - started:.0f} s", flush=True)
    stack = ParleyStack(
        running=running,
        settings=settings,
        fake=fake,
        crm=crm,
        api=api,
        onboarding=Endpoint(
            f"{settings.webhook_url}/webhooks/whatsapp", secret, settings.whatsapp_phone_number_id
        ),
        echo=Endpoint(
            f"http://127.0.0.1:{echo_port}/webhooks/whatsapp",
            secret,
            settings.whatsapp_phone_number_id,
        ),
        log_offsets=offsets,
    )
    ctx.parley = stack
    return stack


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# What the worker and webhook logs say went wrong during the run (messages were still exact,
# or the run would have failed): the price of recoveries that should not have been needed.
ANOMALIES = {
    "runs rescheduled by the dispatcher (lease expired)": b"rescheduled (Parley:",
    "runs failed: cannot be suspended": (
        b'Encountered exception during execution: RuntimeError("Flow run cannot be suspended'
    ),
    "tracebacks": b"Traceback (most recent call last)",
    "resumes given up (left to the dispatcher)": b"gave up resuming",
}


def log_anomalies(ctx: Context) -> dict[str, int] | None:
    if not isinstance(ctx.parley, ParleyStack):
        return None
    stack = ctx.parley
    counts: dict[str, int] = {}
    for name, offset in stack.log_offsets.items():
        raw = (stack.running.stack.log_dir / f"{name}.log").read_bytes()[offset:]
        for label, needle in ANOMALIES.items():
            counts[label] = counts.get(label, 0) + raw.count(needle)
    return counts


def _restart_profiled(ctx: Context, running: RunningStack, settings: Settings) -> None:
    """``--profile``: the same worker and webhook, restarted under ``bench.profiled``."""
    stack = running.stack
    prefix = str((ctx.data_dir / "profile").resolve())
    stack.terminate("worker")
    log = stack.log_dir / "worker.log"
    offset = log.stat().st_size if log.exists() else 0
    worker = stack.spawn(
        "worker", [sys.executable, "-m", "bench.profiled", f"{prefix}-worker", "deployments.worker"]
    )
    deadline = time.monotonic() + 120
    # A starting worker kicks a dispatcher run and runs it: the first sign it is serving.
    while b"Beginning flow run 'dispatcher" not in log.read_bytes()[offset:]:
        if not worker.alive() or time.monotonic() > deadline:
            raise FigureError(f"the profiled worker did not start:\n{worker.tail()}")
        time.sleep(0.25)
    stack.terminate("webhook")
    host, port = settings.webhook_host, str(settings.webhook_port)
    args = ["uvicorn", "webhook.app:app", "--host", host, "--port", port, "--log-level", "warning"]
    webhook = stack.spawn(
        "webhook", [sys.executable, "-m", "bench.profiled", f"{prefix}-webhook", *args]
    )
    _wait_healthy(webhook, f"{settings.webhook_url}/healthz", "the profiled webhook")


def _wait_healthy(process: Any, url: str, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not process.alive():
            break
        time.sleep(0.25)
    raise FigureError(f"{what} did not start:\n{process.tail()}")


def _start_echo_webhook(running: RunningStack, port: int) -> None:
    args = [sys.executable, "-m", "uvicorn", "webhook.app:app", "--host", "127.0.0.1"]
    running.stack.spawn(
        "webhook-echo",
        [*args, "--port", str(port), "--log-level", "warning"],
        {"PARLEY_DEFAULT_CAMPAIGN": str(ECHO_YAML), "PARLEY_WEBHOOK_PORT": str(port)},
    )
