"""`parley dev` as a newcomer meets it: it brings up worker and webhook against a reachable
Prefect API with loopback stand-ins for the WhatsApp API and the default campaign's CRM, a
conversation typed into it completes, it steps around ports something else already serves,
it names a busy port instead of crashing, and Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.stack.chat import ChatSession, text_of
from devkit.stack.processes import free_port, port_is_free
from parley.settings import Settings

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


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


def _dev_env(prefect_server: str | None, tmp_path: Path, **extra: str) -> dict[str, str]:
    webhook_port = free_port()
    env = {
        **os.environ,
        "PARLEY_DATA_DIR": str(tmp_path),
        "PARLEY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/dev.db",
        "PARLEY_WEBHOOK_PORT": str(webhook_port),
        "PARLEY_WHATSAPP_API_URL": f"http://127.0.0.1:{free_port()}/v21.0",
        "PARLEY_CONVERSATION_DEPLOYMENT": f"conversation/dev-{webhook_port}",
        "PARLEY_DISPATCHER_DEPLOYMENT": f"dispatcher/dev-{webhook_port}",
        "PARLEY_DISPATCHER_LIMIT": f"parley-dispatcher-dev-{webhook_port}",
        "CRM_URL": f"http://127.0.0.1:{free_port()}",
        **extra,
    }
    if prefect_server is None:
        env.pop("PREFECT_API_URL", None)
    else:
        env["PREFECT_API_URL"] = prefect_server
    return env


@contextmanager
def _parley_dev(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "parley", "dev", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _settings_of(env: dict[str, str]) -> Settings:
    return Settings(
        webhook_port=int(env["PARLEY_WEBHOOK_PORT"]),
        whatsapp_api_url=env["PARLEY_WHATSAPP_API_URL"],
    )


def test_dev_starts_the_stack_and_ctrl_c_stops_all_of_it(
    prefect_server: str, tmp_path: Path
) -> None:
    env = _dev_env(prefect_server, tmp_path)
    webhook_port = int(env["PARLEY_WEBHOOK_PORT"])
    graph_port = int(env["PARLEY_WHATSAPP_API_URL"].rsplit(":", 1)[1].split("/")[0])
    with _parley_dev(env) as process:
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
        seat = _dev_seat(tmp_path / "dev.db")
        # A newcomer's LinkedIn campaign and leads need a seat: it is there, on the fake gateway.
        assert not port_is_free(int(seat["gateway_url"].rsplit(":", 1)[1].split("/")[0]))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        printed = process.stdout.read().decode() if process.stdout else ""
    assert port_is_free(webhook_port) and port_is_free(graph_port)
    assert f"LinkedIn seat {seat['account_id']}: identity " in printed, printed


def _dev_seat(database: Path) -> dict[str, Any]:
    """The settings of the LinkedIn identity ``parley dev`` added for its fake gateway's seat."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT settings FROM identities WHERE channel = 'linkedin'")
        found = [json.loads(settings) for (settings,) in rows]
    assert len(found) == 1, found
    return found[0]


def test_a_conversation_typed_into_parley_dev_completes_with_the_default_campaign(
    prefect_server: str, tmp_path: Path
) -> None:
    """The onboarding bot's http node reaches the example CRM that `parley dev` serves at the
    campaign's {env.CRM_URL}; before, every conversation retried for ~90 s and died silently."""
    env = _dev_env(prefect_server, tmp_path)
    with _parley_dev(env) as process:
        _wait_for(f"http://127.0.0.1:{env['PARLEY_WEBHOOK_PORT']}/healthz", 120, process)
        chat = ChatSession(_settings_of(env), phone="34611000111", name="Ana")
        said = [
            [text_of(m) for m in chat.say(line)] for line in ("Hi", "Ana", "ana@example.com", "2")
        ]
        crm = httpx.get(f"{env['CRM_URL']}/_fake/requests", timeout=5).json()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    assert said[0] == ["Hi, welcome aboard! What's your name?"]
    assert said[1] == ["Nice to meet you, Ana! What's your email address?"]
    assert said[2][0].startswith("Which plan would you like, Ana?")
    assert said[3] == ["Thanks Ana, you're on Pro."]
    assert [r["json"] for r in crm] == [{"name": "Ana", "email": "ana@example.com", "plan": "Pro"}]


def test_dev_uses_a_provider_that_already_listens_instead_of_crashing(
    prefect_server: str, tmp_path: Path
) -> None:
    """A developer's own mock on the provider URL keeps its port; the bot talks to it."""
    env = _dev_env(prefect_server, tmp_path)
    port = int(env["PARLEY_WHATSAPP_API_URL"].rsplit(":", 1)[1].split("/")[0])
    webhook_url = f"http://127.0.0.1:{env['PARLEY_WEBHOOK_PORT']}/webhooks/whatsapp"
    theirs = FakeWhatsAppAPI(
        port=port,
        access_token="parley-demo-access-token",
        webhook_url=webhook_url,
        app_secret="parley-demo-app-secret",
    )
    with theirs, _parley_dev(env) as process:
        _wait_for(f"http://127.0.0.1:{env['PARLEY_WEBHOOK_PORT']}/healthz", 120, process)
        chat = ChatSession(_settings_of(env), phone="34611000222")
        answers = chat.say("Hi")
        assert [text_of(m) for m in answers] == ["Hi, welcome aboard! What's your name?"]
        assert theirs.texts_to("34611000222") == ["Hi, welcome aboard! What's your name?"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


def test_dev_names_a_busy_prefect_port_instead_of_crashing(tmp_path: Path) -> None:
    """Without a reachable PREFECT_API_URL, `parley dev` starts Prefect on Prefect's own
    PREFECT_SERVER_API_PORT; if another program holds it, it says so and exits 2."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = _dev_env(None, tmp_path, PREFECT_SERVER_API_PORT=str(port))
        with _parley_dev(env) as process:
            output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 2, output
    assert f"port {port} is in use" in output and "PREFECT_SERVER_API_PORT" in output
