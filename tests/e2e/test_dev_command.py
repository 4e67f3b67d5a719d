"""`parley dev` brings up worker and webhook against a reachable Prefect API (plus the fake
Graph API on its loopback default), answers webhooks, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from parley.local.processes import free_port, port_is_free

pytestmark = pytest.mark.e2e


def _wait_for(url: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never answered")


def test_dev_starts_the_stack_and_ctrl_c_stops_all_of_it(
    prefect_server: str, tmp_path: Path
) -> None:
    webhook_port, graph_port = free_port(), free_port()
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PARLEY_DATA_DIR": str(tmp_path),
        "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/dev.db",
        "PARLEY_WEBHOOK_PORT": str(webhook_port),
        "PARLEY_WHATSAPP_API_URL": f"http://127.0.0.1:{graph_port}/v21.0",
        "PARLEY_CONVERSATION_DEPLOYMENT": f"conversation/dev-{webhook_port}",
    }
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-m", "parley", "dev"],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(f"http://127.0.0.1:{webhook_port}/healthz", 120, process)
        verify = httpx.get(
            f"http://127.0.0.1:{webhook_port}/webhooks/whatsapp",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": "parley-demo-verify-token",
                "hub.challenge": "42",
            },
        )
        assert verify.text == "42"
        assert not port_is_free(graph_port)  # the fake Graph API is up on its configured port
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert port_is_free(webhook_port) and port_is_free(graph_port)
