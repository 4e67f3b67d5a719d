"""The WhatsApp client over real HTTP against the loopback fake (and, for odd answers, a canned
stdlib server), so the wire format and the error taxonomy are checked end to end."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from parley.channels.whatsapp.client import WhatsAppClient
from parley.errors import (
    ChannelError,
    IdentityExpired,
    NotOnWhatsApp,
    OutsideCustomerWindow,
    PairRateLimited,
    PermanentChannelError,
    RateLimited,
    TransientChannelError,
)

TOKEN = "test-access-token"
PHONE_NUMBER_ID = "100000000000001"
USER = "4915112345678"


@pytest.fixture
def fake() -> Iterator[FakeWhatsAppAPI]:
    with FakeWhatsAppAPI(access_token=TOKEN, phone_number_id=PHONE_NUMBER_ID) as api:
        yield api


@pytest.fixture
async def client(fake: FakeWhatsAppAPI) -> AsyncIterator[WhatsAppClient]:
    async with WhatsAppClient(fake.api_url, TOKEN, PHONE_NUMBER_ID, timeout=5.0) as whatsapp:
        yield whatsapp


@contextmanager
def canned_server(status: int, body: bytes, headers: dict[str, str]) -> Iterator[str]:
    """A server answering every POST the same way, for answers the fake never gives."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v21.0"
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- sending ----------------------------------------------------------------------------------


async def test_send_text_posts_metas_exact_body_and_returns_the_wamid(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    wamid = await client.send_text(USER, "Hello 👋", client_ref="conv-42:step-3")

    assert wamid.startswith("wamid.")
    assert fake.received == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": USER,
            "type": "text",
            "text": {"body": "Hello 👋", "preview_url": False},
            "biz_opaque_callback_data": "conv-42:step-3",
            "_wamid": wamid,
            "_phone_number_id": PHONE_NUMBER_ID,
        }
    ]


async def test_send_text_without_client_ref_omits_the_callback_data(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    await client.send_text(USER, "Hi")

    assert "biz_opaque_callback_data" not in fake.received[0]


async def test_send_buttons_posts_metas_exact_interactive_body(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    wamid = await client.send_buttons(
        USER, "Ready to start?", [("yes", "Yes, let's go"), ("later", "Later")], client_ref="r-1"
    )

    assert fake.received == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": USER,
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "Ready to start?"},
                "action": {
                    "buttons": [
                        {"type": "reply", "reply": {"id": "yes", "title": "Yes, let's go"}},
                        {"type": "reply", "reply": {"id": "later", "title": "Later"}},
                    ]
                },
            },
            "biz_opaque_callback_data": "r-1",
            "_wamid": wamid,
            "_phone_number_id": PHONE_NUMBER_ID,
        }
    ]


async def test_each_send_gets_its_own_wamid(client: WhatsAppClient, fake: FakeWhatsAppAPI) -> None:
    first = await client.send_text(USER, "one")
    second = await client.send_buttons(USER, "two", [("a", "A")])

    assert first != second
    assert fake.texts_to(USER) == ["one", "two"]


@pytest.mark.parametrize(
    "buttons",
    [
        [],
        [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D")],
        [("a", "x" * 21)],
        [("a", "")],
        [("", "A")],
        [("a", "A"), ("a", "B")],
    ],
    ids=["none", "four", "title-too-long", "empty-title", "empty-id", "duplicate-ids"],
)
async def test_buttons_meta_would_refuse_raise_value_error_before_any_call(
    client: WhatsAppClient, fake: FakeWhatsAppAPI, buttons: list[tuple[str, str]]
) -> None:
    with pytest.raises(ValueError):
        await client.send_buttons(USER, "Pick one", buttons)

    assert fake.received == []


async def test_twenty_character_titles_are_accepted(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    await client.send_buttons(USER, "Pick", [("a", "x" * 20), ("b", "B"), ("c", "C")])

    assert len(fake.received) == 1


# --- error mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [
        (130429, 400, RateLimited),
        (131056, 400, PairRateLimited),  # a RateLimited of that business-user pair only
        (80007, 400, RateLimited),
        (4, 400, RateLimited),
        (131000, 429, RateLimited),
        (131047, 400, OutsideCustomerWindow),
        (190, 401, IdentityExpired),
        (190, 400, IdentityExpired),
        (131000, 500, TransientChannelError),
        (131002, 503, TransientChannelError),
        (2, 500, TransientChannelError),
        (100, 400, PermanentChannelError),
        (131026, 400, NotOnWhatsApp),  # a PermanentChannelError: the node's error edge
    ],
)
async def test_meta_errors_map_to_the_parley_error_family(
    client: WhatsAppClient,
    fake: FakeWhatsAppAPI,
    code: int,
    http_status: int,
    expected: type[ChannelError],
) -> None:
    fake.fail_next(code, http_status)

    with pytest.raises(expected) as caught:
        await client.send_text(USER, "Hello")

    assert type(caught.value) is expected
    assert caught.value.code == code
    assert caught.value.http_status == http_status
    assert str(code) in str(caught.value)
    assert fake.received == []


async def test_a_number_the_fake_knows_as_no_whatsapp_account_is_refused_131026(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    fake.not_on_whatsapp(f"+{USER}")

    with pytest.raises(NotOnWhatsApp) as caught:
        await client.send_text(USER, "Hello")

    assert isinstance(caught.value, PermanentChannelError) and not caught.value.retryable
    assert (caught.value.code, caught.value.http_status) == (131026, 400)
    assert "Message Undeliverable" in str(caught.value)
    assert fake.received == []
    fake.reset()  # forgotten with the rest of the fake's state
    assert (await client.send_text(USER, "Hello")).startswith("wamid.")


async def test_retry_after_header_is_passed_on(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    fake.fail_next(130429, 429, retry_after=7)

    with pytest.raises(RateLimited) as caught:
        await client.send_text(USER, "Hello")

    assert caught.value.retry_after == 7.0
    assert caught.value.retryable


async def test_rate_limit_without_retry_after_leaves_it_unknown(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    fake.fail_next(131056, 400)

    with pytest.raises(RateLimited) as caught:
        await client.send_text(USER, "Hello")

    assert caught.value.retry_after is None


async def test_fail_next_count_fails_that_many_sends_then_recovers(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    fake.fail_next(131000, 500, count=2)

    for _ in range(2):
        with pytest.raises(TransientChannelError):
            await client.send_text(USER, "Hello")
    assert (await client.send_text(USER, "Hello")).startswith("wamid.")


async def test_wrong_token_is_identity_expired(fake: FakeWhatsAppAPI) -> None:
    async with WhatsAppClient(fake.api_url, "revoked-token", PHONE_NUMBER_ID) as client:
        with pytest.raises(IdentityExpired) as caught:
            await client.send_text(USER, "Hello")

    assert (caught.value.code, caught.value.http_status) == (190, 401)
    assert not caught.value.retryable


async def test_the_phone_number_object_answers_while_the_token_works_then_190_when_expired(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    number = await client.phone_number()
    assert number["id"] == PHONE_NUMBER_ID and number["display_phone_number"]
    fake.expire_token()
    with pytest.raises(IdentityExpired) as caught:
        await client.phone_number()
    assert (caught.value.code, caught.value.http_status) == (190, 401)
    assert "Session has expired" in str(caught.value)
    fake.renew_token()
    assert (await client.phone_number(PHONE_NUMBER_ID))["id"] == PHONE_NUMBER_ID
    assert fake.received == []


async def test_body_the_provider_refuses_is_permanent(
    client: WhatsAppClient, fake: FakeWhatsAppAPI
) -> None:
    with pytest.raises(PermanentChannelError) as caught:
        await client.send_text(USER, "")

    assert (caught.value.code, caught.value.http_status) == (100, 400)
    assert "text['body']" in str(caught.value)


async def test_timeout_is_transient_although_the_provider_accepted(
    fake: FakeWhatsAppAPI,
) -> None:
    fake.hold_next(1.0)

    async with WhatsAppClient(fake.api_url, TOKEN, PHONE_NUMBER_ID, timeout=0.2) as client:
        with pytest.raises(TransientChannelError) as caught:
            await client.send_text(USER, "Hello", client_ref="uncertain-1")

    assert caught.value.retryable
    assert (caught.value.code, caught.value.http_status) == (None, None)
    assert [m["biz_opaque_callback_data"] for m in fake.received] == ["uncertain-1"]


async def test_connection_refused_is_transient() -> None:
    api_url = f"http://127.0.0.1:{closed_port()}/v21.0"

    async with WhatsAppClient(api_url, TOKEN, PHONE_NUMBER_ID, timeout=2.0) as client:
        with pytest.raises(TransientChannelError) as caught:
            await client.send_text(USER, "Hello")

    assert caught.value.http_status is None


async def test_success_without_message_id_is_permanent() -> None:
    with canned_server(200, b'{"messaging_product":"whatsapp"}', {}) as api_url:
        async with WhatsAppClient(api_url, TOKEN, PHONE_NUMBER_ID) as client:
            with pytest.raises(PermanentChannelError, match="without a message id") as caught:
                await client.send_text(USER, "Hello")

    assert caught.value.http_status == 200


async def test_non_json_gateway_error_is_transient() -> None:
    with canned_server(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}) as api_url:
        async with WhatsAppClient(api_url, TOKEN, PHONE_NUMBER_ID) as client:
            with pytest.raises(TransientChannelError, match="Bad Gateway") as caught:
                await client.send_text(USER, "Hello")

    assert (caught.value.code, caught.value.http_status) == (None, 502)


async def test_retry_after_as_http_date_is_understood() -> None:
    headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    with canned_server(429, b"{}", headers) as api_url:
        async with WhatsAppClient(api_url, TOKEN, PHONE_NUMBER_ID) as client:
            with pytest.raises(RateLimited) as caught:
                await client.send_text(USER, "Hello")

    assert caught.value.retry_after == 0.0
