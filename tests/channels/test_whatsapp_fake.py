"""The loopback fake itself: signed status callbacks, held answers, the control surface and the
standalone process, all over real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from parley.channels.whatsapp.client import WhatsAppClient
from parley.channels.whatsapp.wire import (
    SIGNATURE_HEADER,
    StatusUpdate,
    parse_webhook,
    verify_signature,
)
from parley.errors import InvalidSignature, RateLimited, TransientChannelError

SECRET = "test-app-secret"
TOKEN = "test-access-token"
PHONE_NUMBER_ID = "100000000000001"
USER = "4915112345678"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WebhookReceiver:
    """Plays our webhook endpoint: verifies each POST's signature and keeps what it accepted."""

    url: str = ""
    failures_to_give: int = 0
    statuses: list[StatusUpdate] = field(default_factory=list)
    refused: int = 0
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def receive(self, raw: bytes, signature: str | None) -> int:
        with self.arrived:
            if self.failures_to_give > 0:
                self.failures_to_give -= 1
                return 500
            try:
                verify_signature(raw, signature, SECRET)
            except InvalidSignature:
                self.refused += 1
                return 401
            self.statuses.extend(parse_webhook(raw).statuses)
            self.arrived.notify_all()
            return 200

    def wait_for_statuses(self, n: int, timeout: float = 5.0) -> list[StatusUpdate]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.statuses) >= n, timeout)
            return list(self.statuses)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(state.receive(raw, self.headers.get(SIGNATURE_HEADER)))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/whatsapp"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake(receiver: WebhookReceiver) -> Iterator[FakeWhatsAppAPI]:
    api = FakeWhatsAppAPI(
        access_token=TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
        webhook_url=receiver.url,
        app_secret=SECRET,
    )
    with api:
        yield api


@pytest.fixture
async def client(fake: FakeWhatsAppAPI) -> AsyncIterator[WhatsAppClient]:
    async with WhatsAppClient(fake.api_url, TOKEN, PHONE_NUMBER_ID, timeout=5.0) as whatsapp:
        yield whatsapp


# --- status callbacks -------------------------------------------------------------------------


async def test_sent_then_delivered_callbacks_arrive_signed_with_the_client_ref(
    client: WhatsAppClient, receiver: WebhookReceiver
) -> None:
    wamid = await client.send_text(USER, "Hello", client_ref="conv-7:step-1")

    statuses = await asyncio.to_thread(receiver.wait_for_statuses, 2)

    assert [(s.provider_message_id, s.status) for s in statuses] == [
        (wamid, "sent"),
        (wamid, "delivered"),
    ]
    assert all(s.client_ref == "conv-7:step-1" for s in statuses)
    assert all(s.recipient == USER and s.identity_address == PHONE_NUMBER_ID for s in statuses)
    assert receiver.refused == 0


async def test_callbacks_without_client_ref_have_none(
    client: WhatsAppClient, receiver: WebhookReceiver
) -> None:
    await client.send_buttons(USER, "Pick", [("a", "A")])

    statuses = await asyncio.to_thread(receiver.wait_for_statuses, 2)

    assert [s.client_ref for s in statuses] == [None, None]


async def test_failed_callback_deliveries_are_retried(
    client: WhatsAppClient, receiver: WebhookReceiver
) -> None:
    receiver.failures_to_give = 2

    await client.send_text(USER, "Hello")
    statuses = await asyncio.to_thread(receiver.wait_for_statuses, 2)

    assert [s.status for s in statuses] == ["sent", "delivered"]


async def test_an_unreachable_webhook_never_breaks_sending() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/webhook"
    api = FakeWhatsAppAPI(access_token=TOKEN, webhook_url=dead_url, app_secret=SECRET)
    with api:
        async with WhatsAppClient(api.api_url, TOKEN, PHONE_NUMBER_ID) as whatsapp:
            first = await whatsapp.send_text(USER, "one")
            second = await whatsapp.send_text(USER, "two")

    assert first != second
    assert api.texts_to(USER) == ["one", "two"]


async def test_no_callbacks_for_refused_sends(
    client: WhatsAppClient, fake: FakeWhatsAppAPI, receiver: WebhookReceiver
) -> None:
    fake.fail_next(130429, 400)
    with pytest.raises(RateLimited):
        await client.send_text(USER, "Hello")
    wamid = await client.send_text(USER, "Again")

    statuses = await asyncio.to_thread(receiver.wait_for_statuses, 2)

    assert {s.provider_message_id for s in statuses} == {wamid}


# --- held answers -----------------------------------------------------------------------------


async def test_hold_records_and_reports_the_send_before_answering(
    client: WhatsAppClient, fake: FakeWhatsAppAPI, receiver: WebhookReceiver
) -> None:
    fake.hold_next(1.5)

    sending = asyncio.create_task(client.send_text(USER, "Hello", client_ref="held-1"))
    statuses = await asyncio.to_thread(receiver.wait_for_statuses, 2)

    assert not sending.done()
    recorded = fake.received
    assert [m["biz_opaque_callback_data"] for m in recorded] == ["held-1"]
    assert [s.client_ref for s in statuses] == ["held-1", "held-1"]
    assert await sending == recorded[0]["_wamid"] == statuses[0].provider_message_id


async def test_hold_applies_to_one_send_only(client: WhatsAppClient, fake: FakeWhatsAppAPI) -> None:
    fake.hold_next(0.5)
    await client.send_text(USER, "held")

    started = time.monotonic()
    await client.send_text(USER, "prompt")

    assert time.monotonic() - started < 0.4


async def test_a_caller_that_gives_up_during_a_hold_leaves_a_recorded_send(
    fake: FakeWhatsAppAPI, receiver: WebhookReceiver
) -> None:
    fake.hold_next(1.0)

    async with WhatsAppClient(fake.api_url, TOKEN, PHONE_NUMBER_ID, timeout=0.3) as impatient:
        with pytest.raises(TransientChannelError):
            await impatient.send_text(USER, "Hello", client_ref="crashed-1")

    statuses = await asyncio.to_thread(receiver.wait_for_statuses, 2)
    assert [s.client_ref for s in statuses] == ["crashed-1", "crashed-1"]
    assert fake.received[0]["_wamid"] == statuses[0].provider_message_id


# --- recording helpers ------------------------------------------------------------------------


async def test_wait_for_messages(client: WhatsAppClient, fake: FakeWhatsAppAPI) -> None:
    assert not fake.wait_for_messages(1, timeout=0.05)

    await client.send_text(USER, "Hello")

    assert fake.wait_for_messages(1, timeout=1.0)


async def test_texts_to_reads_text_and_button_bodies_per_recipient(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    await client.send_text(USER, "Hello")
    await client.send_buttons(USER, "Ready?", [("yes", "Yes")])
    await client.send_text("4915199999999", "Someone else")

    assert fake.texts_to(USER) == ["Hello", "Ready?"]


async def test_received_is_a_copy(client: WhatsAppClient, fake: FakeWhatsAppAPI) -> None:
    await client.send_text(USER, "Hello")

    fake.received[0]["text"]["body"] = "tampered"

    assert fake.texts_to(USER) == ["Hello"]


async def test_reset_forgets_messages_failures_and_holds(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    await client.send_text(USER, "Hello")
    fake.fail_next(131000, 500)
    fake.hold_next(5.0)

    fake.reset()
    started = time.monotonic()
    await client.send_text(USER, "After reset")

    assert time.monotonic() - started < 1.0
    assert fake.texts_to(USER) == ["After reset"]


# --- validation like Meta's -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({"to": USER, "type": "text", "text": {"body": "x"}}, "messaging_product"),
        ({"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}}, "to"),
        ({"messaging_product": "whatsapp", "to": USER, "text": {"body": "x"}}, "type"),
        ({"messaging_product": "whatsapp", "to": USER, "type": "text"}, "text"),
        ({"messaging_product": "whatsapp", "to": USER, "type": "text", "text": {}}, "body"),
        (
            {
                "messaging_product": "whatsapp",
                "to": USER,
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "Pick"},
                    "action": {"buttons": [{"type": "reply", "reply": {"id": "a", "title": ""}}]},
                },
            },
            "title",
        ),
    ],
)
def test_bodies_meta_would_refuse_get_code_100(
    fake: FakeWhatsAppAPI, body: dict[str, Any], details: str
) -> None:
    response = httpx.post(
        f"{fake.api_url}/{PHONE_NUMBER_ID}/messages",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (100, "OAuthException")
    assert details in error["error_data"]["details"]
    assert error["fbtrace_id"]
    assert fake.received == []


def test_missing_token_gets_metas_oauth_error(fake: FakeWhatsAppAPI) -> None:
    response = httpx.post(f"{fake.api_url}/{PHONE_NUMBER_ID}/messages", json={})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == 190


def test_unknown_phone_number_id_is_refused(fake: FakeWhatsAppAPI) -> None:
    response = httpx.post(
        f"{fake.api_url}/999/messages",
        json={"messaging_product": "whatsapp", "to": USER, "type": "text", "text": {"body": "x"}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )

    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["error_subcode"]) == (
        100,
        33,
    )


def test_unknown_paths_are_404(fake: FakeWhatsAppAPI) -> None:
    assert httpx.get(f"{fake.base_url}/nothing").status_code == 404
    assert httpx.post(f"{fake.base_url}/v1.0/{PHONE_NUMBER_ID}/messages").status_code == 404


# --- control surface --------------------------------------------------------------------------


async def test_control_endpoints_drive_the_fake_from_another_process(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as control:
        await client.send_text(USER, "Hello")
        listed = (await control.get("/_fake/messages")).json()
        assert [m["text"]["body"] for m in listed] == ["Hello"]
        assert listed[0]["_wamid"].startswith("wamid.")

        fail = {"code": 130429, "http_status": 429, "count": 2, "retry_after": 3}
        assert (await control.post("/_fake/fail", json=fail)).json() == {"ok": True}
        for _ in range(2):
            with pytest.raises(RateLimited) as caught:
                await client.send_text(USER, "Throttled")
            assert caught.value.retry_after == 3.0

        assert (await control.post("/_fake/hold", json={"seconds": 0.5})).status_code == 200
        started = time.monotonic()
        await client.send_text(USER, "Held")
        assert time.monotonic() - started >= 0.45

        assert (await control.post("/_fake/reset")).status_code == 200
        assert (await control.get("/_fake/messages")).json() == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_fake/fail", b'{"code": 4}'),
        ("/_fake/fail", b"[]"),
        ("/_fake/hold", b'{"seconds": "soon"}'),
        ("/_fake/hold", b"not json"),
    ],
)
def test_bad_control_requests_are_400(fake: FakeWhatsAppAPI, path: str, body: bytes) -> None:
    response = httpx.post(f"{fake.base_url}{path}", content=body)

    assert response.status_code == 400
    assert response.json()["ok"] is False


# --- lifecycle and standalone -----------------------------------------------------------------


def test_api_url_needs_a_started_server() -> None:
    api = FakeWhatsAppAPI()

    with pytest.raises(RuntimeError):
        _ = api.api_url
    api.stop()


def test_api_url_has_the_version_and_the_real_port() -> None:
    with FakeWhatsAppAPI(version="v22.0") as api:
        assert api.api_url.startswith("http://127.0.0.1:")
        assert api.api_url.endswith("/v22.0")
        assert not api.api_url.endswith(":0/v22.0")


def test_standalone_process_serves_until_sigterm() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.fakes.whatsapp_fake", "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert _wait_until_serving(f"http://127.0.0.1:{port}/_fake/messages", process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        try:
            return httpx.get(url, timeout=1.0).json() == []
        except httpx.TransportError:
            time.sleep(0.1)
    return False
