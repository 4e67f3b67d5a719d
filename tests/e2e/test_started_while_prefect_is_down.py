"""Processes started during a Prefect outage (a restart, a deploy) come up and wait for it:
the webhook stores and answers, the worker waits with a log line; none exits for a process
manager to restart it in a loop. Prefect is "down" as the process sees it: its API URL points
at a loopback proxy in front of the session's server, closed until the test opens it."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from deployments.blocks import register_database_block
from devkit.fakes.whatsapp_payloads import build_text_message_payload
from devkit.stack.processes import Process, Stack, free_port
from parley.channels.whatsapp.wire import sign
from parley.db import Database
from parley.db.models import Message
from tests.e2e.conftest import APP_SECRET, ONBOARDING, PHONE_NUMBER_ID, E2EStack
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e


@pytest.fixture
def prefect_proxy(prefect_server: str) -> Iterator[TcpProxy]:
    """Closed until the test calls ``up()``: connections to it are refused, like a server that
    is down."""
    target = urlsplit(prefect_server).port
    assert target is not None
    proxy = TcpProxy(target, free_port())
    yield proxy
    proxy.close()


def _url(proxy: TcpProxy) -> str:
    return f"http://127.0.0.1:{proxy.listen_port}/api"


async def _wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:.0f} s")


def _wait_for_log(process: Process, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in process.log_path.read_text(errors="replace"):
            return
        assert process.alive(), f"{process.name} exited:\n{process.tail()}"
        time.sleep(0.2)
    raise AssertionError(f"{process.name} never logged {text!r}:\n{process.tail()}")


async def _post_message(webhook_url: str, phone: str, text: str) -> httpx.Response:
    payload = build_text_message_payload(
        phone_number_id=PHONE_NUMBER_ID, from_phone=phone, text=text, contact_name="Outage"
    )
    raw = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(raw, APP_SECRET)}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(webhook_url, content=raw, headers=headers)


async def _stored_texts(db_url: str) -> list[str | None]:
    db = Database(db_url)
    try:
        async with db.read() as session:
            rows = await session.execute(select(Message.text).where(Message.direction == "in"))
            return list(rows.scalars())
    finally:
        await db.dispose()


async def test_webhook_started_while_prefect_is_down_stores_and_answers_200(
    stack_factory: Any, prefect_proxy: TcpProxy
) -> None:
    """The webhook's Prefect is down from its start: it comes up, stores the message, answers
    200; the dispatcher (whose worker reaches Prefect) starts the run. Once the webhook's
    Prefect is back, it resumes runs itself again."""
    stack: E2EStack = stack_factory("postgresql", prefect_api_url=_url(prefect_proxy))
    webhook = stack.stack.processes["webhook"]
    user = stack.user("Outage")
    response = await user.post(
        build_text_message_payload(
            phone_number_id=PHONE_NUMBER_ID, from_phone=user.phone, text="Hi", contact_name="O"
        )
    )
    assert response.status_code == 200
    assert "Hi" in await _stored_texts(stack.db_url)
    assert await user.wait_for_bot(1, timeout=90)  # the dispatcher started the run
    prefect_proxy.up()
    assert await user.say("Ada", timeout=90)  # the conversation goes on
    assert webhook.alive()
    detail = await stack.wait_for_status(user, "suspended", timeout=60)
    assert detail["variables"]["name"] == "Ada"


async def test_webhook_started_while_prefect_is_down_with_the_url_only_in_the_block_waits(
    prefect_server: str,
    prefect_proxy: TcpProxy,
    database_factory: Any,
    tmp_path: Path,
) -> None:
    """PARLEY_DATABASE_URL unset: only the parley-db block knows the database. Started while
    Prefect is down and never started before, the webhook cannot know where to store: it stays
    up and answers 503 with Retry-After (Meta delivers again) until the block can be read.
    What it read is kept, so the next start during an outage stores at once."""
    db_url = database_factory("postgresql")
    block = f"parley-db-{uuid.uuid4().hex[:8]}"
    await register_database_block(block, db_url)
    port = free_port()
    webhook_url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
    env = {
        "PARLEY_DB_BLOCK": block,
        "PARLEY_DATA_DIR": str(tmp_path / "data"),
        "PARLEY_WHATSAPP_APP_SECRET": APP_SECRET,
        "PARLEY_WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "PARLEY_DEFAULT_CAMPAIGN": str(ONBOARDING),
        "PARLEY_CONVERSATION_DEPLOYMENT": f"conversation/nobody-{block}",
    }
    assert "PARLEY_DATABASE_URL" not in os.environ
    stack = Stack(tmp_path, env=env)
    stack.use_prefect_api(_url(prefect_proxy), Path(os.environ["PREFECT_HOME"]))
    try:
        webhook = stack.start_webhook("127.0.0.1", port)
        refused = await _post_message(webhook_url, "491700000001", "while Prefect is down")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        _wait_for_log(webhook, "retrying in 5 s")
        assert webhook.alive()

        prefect_proxy.up()
        answers: list[int] = []

        async def stored_once_open() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                response = await _post_message(webhook_url, "491700000001", "Prefect is back")
                answers.append(response.status_code)
                if response.status_code == 200:
                    return
                assert response.status_code == 503
                await asyncio.sleep(0.5)
            raise AssertionError(f"never stored: {answers}")

        await stored_once_open()
        assert "Prefect is back" in await _stored_texts(db_url)

        # Restarted during the next outage: the URL the block gave is kept in the data dir.
        stack.terminate("webhook")
        prefect_proxy.down()
        webhook = stack.start_webhook("127.0.0.1", port)
        stored = await _post_message(webhook_url, "491700000001", "down again")
        assert stored.status_code == 200
        assert "down again" in await _stored_texts(db_url)
        _wait_for_log(webhook, "named when it was last read")
    finally:
        stack.stop()


async def test_worker_started_while_prefect_is_down_waits_then_works(
    stack_factory: Any, prefect_proxy: TcpProxy
) -> None:
    """The worker's Prefect is down when it starts: it stays up and says it is retrying; once
    Prefect is reachable it registers its deployments and runs conversations."""

    def prefect_comes_back(handle: E2EStack) -> None:
        worker = handle.stack.processes["worker"]
        _wait_for_log(worker, f"Prefect API at {_url(prefect_proxy)} unreachable")
        _wait_for_log(worker, "retrying in 5 s")
        assert worker.alive()
        prefect_proxy.up()

    stack: E2EStack = stack_factory(
        "postgresql",
        worker_env={"PREFECT_API_URL": _url(prefect_proxy)},
        worker_started=prefect_comes_back,
    )
    user = stack.user("Late")
    assert await user.say("Hi", timeout=90)
    await _wait_for(stack.stack.processes["worker"].alive, "worker alive", timeout=1)
