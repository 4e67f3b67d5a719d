"""The LinkedIn gateway client over real HTTP against the loopback fake gateway (and, for answers
the fake never gives, a canned stdlib server), so the contract and the error taxonomy are
checked end to end."""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.stack.processes import free_port
from parley.channels.base import OutboundMessage, OutreachAction, SenderIdentity
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.channels.linkedin.client import (
    ACTION_TYPES,
    CAPABILITIES,
    LinkedInGatewayClient,
)
from parley.errors import (
    ChannelError,
    CreditsExhausted,
    IdentityExpired,
    NotConnected,
    PermanentChannelError,
    RateLimited,
    TransientChannelError,
    Undeliverable,
)

API_KEY = "test-gateway-key"
SEAT = "seat-ada"
LEAD = "urn:li:fsd_profile:ACoAAB1234567"
STRANGER = "grace-hopper-42"
REPO_ROOT = Path(__file__).resolve().parents[2]


def message(client_ref: str = "conv-1:step-1", text: str = "Hi Grace!") -> OutreachAction:
    return OutreachAction("linkedin_message", LEAD, client_ref, text=text)


@pytest.fixture
def fake() -> Iterator[FakeLinkedInGateway]:
    with FakeLinkedInGateway(api_key=API_KEY, accounts=[SEAT]) as gateway:
        gateway.connect(SEAT, LEAD)
        yield gateway


@pytest.fixture
def sender(fake: FakeLinkedInGateway) -> SenderIdentity:
    return fake.sender(SEAT)


@pytest.fixture
async def client() -> AsyncIterator[LinkedInGatewayClient]:
    async with LinkedInGatewayClient(timeout=5.0) as gateway_client:
        yield gateway_client


@contextmanager
def canned_server(status: int, body: bytes, headers: dict[str, str]) -> Iterator[str]:
    """A server answering every request the same way, for answers the fake never gives."""

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
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def seat_at(gateway_url: str) -> SenderIdentity:
    settings = {"account_id": SEAT, "gateway_url": gateway_url, "api_key": API_KEY}
    return SenderIdentity("linkedin", SEAT, settings)


# --- each action round-trips ------------------------------------------------------------------


async def test_message_posts_to_and_text_with_the_idempotency_key_and_returns_the_gateway_id(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    result = await client.perform(message("conv-7:step-2", "Hi Grace 👋"), sender)

    [action] = fake.performed
    assert (action.kind, action.account_id, action.idempotency_key) == (
        "message",
        SEAT,
        "conv-7:step-2",
    )
    assert action.body == {"to": LEAD, "text": "Hi Grace 👋"}
    assert result.provider_id == action.id
    assert result.provider_id.startswith("msg_")
    assert result.detail == {
        "account_id": SEAT,
        "endpoint": "messages",
        "http_status": 201,
        "replayed": False,
    }


async def test_connection_request_posts_the_note(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    action = OutreachAction("linkedin_connection", STRANGER, "inv-1", text="Loved your talk")

    result = await client.perform(action, sender)

    [performed] = fake.actions_to(STRANGER)
    assert performed.kind == "invitation"
    assert performed.body == {"to": STRANGER, "note": "Loved your talk"}
    assert result.provider_id == performed.id


async def test_connection_request_without_a_note_sends_no_note(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    await client.perform(OutreachAction("linkedin_connection", STRANGER, "inv-2"), sender)

    assert fake.performed[0].body == {"to": STRANGER}


async def test_inmail_posts_subject_and_text_and_reports_the_credits_left(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    action = OutreachAction(
        "linkedin_inmail", STRANGER, "inm-1", text="Would you talk?", subject="COBOL"
    )

    result = await client.perform(action, sender)

    [performed] = fake.performed
    assert performed.kind == "inmail"
    assert performed.body == {"to": STRANGER, "subject": "COBOL", "text": "Would you talk?"}
    assert result.provider_id == performed.id
    assert result.detail["inmail_credits"] == 4
    assert fake.account(SEAT).inmail_credits == 4


async def test_profile_visit_posts_only_the_recipient(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    action = OutreachAction("linkedin_profile_visit", STRANGER, "vis-1", text="ignored")

    result = await client.perform(action, sender)

    [performed] = fake.performed
    assert (performed.kind, performed.body) == ("profile_visit", {"to": STRANGER})
    assert result.provider_id == performed.id


async def test_the_channel_names_exactly_the_seven_action_types() -> None:
    channel = LinkedInChannel(LinkedInConfig())

    assert channel.name == "linkedin"
    assert (
        channel.action_types
        == ACTION_TYPES
        == {
            "linkedin_message",
            "linkedin_connection",
            "linkedin_inmail",
            "linkedin_profile_visit",
            "linkedin_attachment",
            "linkedin_voice",
            "linkedin_like_post",
        }
    )
    assert (CAPABILITIES.max_buttons, CAPABILITIES.max_text_length) == (0, 8000)
    assert CAPABILITIES.echoes_reference


# --- idempotency ------------------------------------------------------------------------------


async def test_a_repeated_idempotency_key_is_performed_once_and_returns_the_first_id(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    first = await client.perform(message("conv-1:step-1"), sender)
    again = await client.perform(message("conv-1:step-1"), sender)

    assert again.provider_id == first.provider_id
    assert (first.detail["replayed"], again.detail["replayed"]) == (False, True)
    assert len(fake.performed) == 1


async def test_different_keys_are_different_actions(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    first = await client.perform(message("k-1"), sender)
    second = await client.perform(message("k-2"), sender)

    assert first.provider_id != second.provider_id
    assert [a.idempotency_key for a in fake.actions_to(LEAD)] == ["k-1", "k-2"]


async def test_a_refusal_is_not_remembered_so_a_retry_with_the_same_key_succeeds(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.fail_next("internal_error", 500)

    with pytest.raises(TransientChannelError):
        await client.perform(message("retry-1"), sender)
    result = await client.perform(message("retry-1"), sender)

    assert [a.id for a in fake.performed] == [result.provider_id]
    assert result.detail["replayed"] is False


async def test_timeout_after_the_gateway_performed_is_transient_with_unknown_status_and_the_retry_is_not_performed_twice(  # noqa: E501
    fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.hold_next(1.0)

    async with LinkedInGatewayClient(timeout=0.2) as impatient:
        with pytest.raises(TransientChannelError) as caught:
            await impatient.perform(message("uncertain-1"), sender)
    assert caught.value.retryable
    assert caught.value.http_status is None
    assert [a.idempotency_key for a in fake.performed] == ["uncertain-1"]

    async with LinkedInGatewayClient(timeout=5.0) as patient:
        retried = await patient.perform(message("uncertain-1"), sender)

    assert retried.provider_id == fake.performed[0].id
    assert retried.detail["replayed"] is True
    assert len(fake.performed) == 1


# --- error mapping ----------------------------------------------------------------------------


async def test_expired_session_is_identity_expired_and_nothing_is_performed(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.expire_session(SEAT)

    with pytest.raises(IdentityExpired, match="session_expired") as caught:
        await client.perform(message(), sender)

    assert caught.value.http_status == 401
    assert not caught.value.retryable
    assert fake.performed == []


async def test_rate_limited_with_retry_after_seconds_is_rate_limited_with_retry_after(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.fail_next("rate_limited", 429, retry_after=30)

    with pytest.raises(RateLimited) as caught:
        await client.perform(message(), sender)

    assert caught.value.retry_after == 30.0
    assert caught.value.http_status == 429
    assert caught.value.retryable
    assert fake.performed == []


async def test_rate_limited_with_retry_after_as_http_date_gives_the_seconds_until_then(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.fail_next("rate_limited", 429, retry_after=email.utils.formatdate(time.time() + 120))

    with pytest.raises(RateLimited) as caught:
        await client.perform(message(), sender)

    assert caught.value.retry_after is not None
    assert 110 <= caught.value.retry_after <= 120


async def test_rate_limited_without_retry_after_leaves_it_unknown(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.fail_next("rate_limited", 429)

    with pytest.raises(RateLimited) as caught:
        await client.perform(message(), sender)

    assert caught.value.retry_after is None


async def test_message_to_someone_not_connected_is_not_connected(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    action = OutreachAction("linkedin_message", STRANGER, "m-1", text="Hello")

    with pytest.raises(NotConnected) as caught:
        await client.perform(action, sender)

    assert caught.value.http_status == 409
    assert fake.performed == []


async def test_message_once_connected_goes_through(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.connect(SEAT, STRANGER)

    await client.perform(OutreachAction("linkedin_message", STRANGER, "m-2", text="Hi"), sender)

    assert [a.text for a in fake.actions_to(STRANGER)] == ["Hi"]


async def test_inmail_without_credits_is_credits_exhausted(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.set_inmail_credits(SEAT, 0)
    action = OutreachAction("linkedin_inmail", STRANGER, "inm-2", text="Hi", subject="Hello")

    with pytest.raises(CreditsExhausted) as caught:
        await client.perform(action, sender)

    assert caught.value.http_status == 402
    assert fake.performed == []


async def test_unavailable_profile_is_undeliverable(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.mark_unavailable(STRANGER)

    with pytest.raises(Undeliverable) as caught:
        await client.perform(OutreachAction("linkedin_profile_visit", STRANGER, "v-1"), sender)

    assert caught.value.http_status == 410


@pytest.mark.parametrize(
    ("error_type", "http_status", "expected"),
    [
        ("session_expired", 401, IdentityExpired),
        ("unauthorized", 401, IdentityExpired),
        ("account_not_found", 404, IdentityExpired),
        ("rate_limited", 429, RateLimited),
        ("not_connected", 409, NotConnected),
        ("no_credits", 402, CreditsExhausted),
        ("recipient_unavailable", 404, Undeliverable),
        ("recipient_unavailable", 410, Undeliverable),
        ("invalid_request", 400, PermanentChannelError),
        ("invalid_request", 422, PermanentChannelError),
        ("attachment_rejected", 413, PermanentChannelError),
        ("attachment_rejected", 415, PermanentChannelError),
        ("voice_rejected", 413, PermanentChannelError),
        ("not_a_post", 422, PermanentChannelError),
        ("internal_error", 500, TransientChannelError),
        ("upstream_unavailable", 503, TransientChannelError),
        ("something_new", 429, RateLimited),
        ("something_new", 401, IdentityExpired),
        ("something_new", 402, CreditsExhausted),
        ("something_new", 404, PermanentChannelError),
        ("something_new", 408, TransientChannelError),
    ],
)
async def test_gateway_error_types_map_to_the_parley_error_family(
    client: LinkedInGatewayClient,
    fake: FakeLinkedInGateway,
    sender: SenderIdentity,
    error_type: str,
    http_status: int,
    expected: type[ChannelError],
) -> None:
    fake.fail_next(error_type, http_status, message="told you so")

    with pytest.raises(expected) as caught:
        await client.perform(message(), sender)

    assert type(caught.value) is expected
    assert caught.value.http_status == http_status
    assert error_type in str(caught.value)
    assert "told you so" in str(caught.value)
    assert fake.performed == []


async def test_5xx_is_transient_and_carries_its_http_status(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fake.fail_next("internal_error", 502, count=2)

    for _ in range(2):
        with pytest.raises(TransientChannelError) as caught:
            await client.perform(message(), sender)
        assert caught.value.http_status == 502
        assert caught.value.retryable
    assert (await client.perform(message(), sender)).provider_id is not None


async def test_non_json_5xx_is_transient_with_its_status() -> None:
    with canned_server(502, b"<html>Bad Gateway</html>", {"Content-Type": "text/html"}) as url:
        async with LinkedInGatewayClient() as client:
            with pytest.raises(TransientChannelError, match="Bad Gateway") as caught:
                await client.perform(message(), seat_at(url))

    assert caught.value.http_status == 502


async def test_a_bare_404_without_an_error_type_does_not_end_the_conversation() -> None:
    with canned_server(404, b"Not Found", {"Content-Type": "text/plain"}) as url:
        async with LinkedInGatewayClient() as client:
            with pytest.raises(PermanentChannelError) as caught:
                await client.perform(message(), seat_at(url))

    assert type(caught.value) is PermanentChannelError  # not Undeliverable


async def test_success_without_an_id_is_performed_with_an_unknown_provider_id() -> None:
    with canned_server(201, b"{}", {"Content-Type": "application/json"}) as url:
        async with LinkedInGatewayClient() as client:
            result = await client.perform(message(), seat_at(url))

    assert result.provider_id is None
    assert result.detail["http_status"] == 201


async def test_wrong_api_key_is_identity_expired(fake: FakeLinkedInGateway) -> None:
    settings = {"account_id": SEAT, "gateway_url": fake.gateway_url, "api_key": "revoked"}

    async with LinkedInGatewayClient() as client:
        with pytest.raises(IdentityExpired, match="unauthorized"):
            await client.perform(message(), SenderIdentity("linkedin", SEAT, settings))


async def test_unknown_account_is_identity_expired(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway
) -> None:
    with pytest.raises(IdentityExpired, match="account_not_found") as caught:
        await client.perform(message(), fake.sender("seat-nobody"))

    assert caught.value.http_status == 404


async def test_connection_refused_is_transient_with_unknown_status() -> None:
    async with LinkedInGatewayClient(timeout=2.0) as client:
        with pytest.raises(TransientChannelError, match="unreachable") as caught:
            await client.perform(message(), seat_at(f"http://127.0.0.1:{free_port()}"))

    assert caught.value.http_status is None


async def test_the_gateway_itself_refuses_an_action_without_an_idempotency_key(
    fake: FakeLinkedInGateway,
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{fake.gateway_url}/v1/accounts/{SEAT}/messages",
            json={"to": LEAD, "text": "Hi"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )

    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"
    assert fake.performed == []


# --- refused locally, before any call ---------------------------------------------------------


async def test_an_invitation_note_over_300_characters_is_refused_locally(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    action = OutreachAction("linkedin_connection", STRANGER, "inv-3", text="x" * 301)

    with pytest.raises(PermanentChannelError, match="300") as caught:
        await client.perform(action, sender)

    assert caught.value.http_status is None
    assert fake.performed == []


async def test_an_invitation_note_of_exactly_300_characters_is_sent(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    action = OutreachAction("linkedin_connection", STRANGER, "inv-4", text="x" * 300)

    await client.perform(action, sender)

    assert len(fake.performed[0].body["note"]) == 300


@pytest.mark.parametrize(
    "action",
    [
        OutreachAction("linkedin_message", LEAD, "r-1", text="x" * 8001),
        OutreachAction("linkedin_message", LEAD, "r-2"),
        OutreachAction("linkedin_inmail", LEAD, "r-3", text="Hi"),
        OutreachAction("linkedin_inmail", LEAD, "r-4", subject="Hi"),
        OutreachAction("linkedin_profile_visit", "  ", "r-5"),
        OutreachAction("linkedin_endorsement", LEAD, "r-6"),
        OutreachAction("linkedin_profile_visit", LEAD, ""),
        OutreachAction("linkedin_attachment", LEAD, "r-7"),
        OutreachAction("linkedin_attachment", LEAD, "r-8", file="ftp://files.example/a.pdf"),
        OutreachAction("linkedin_voice", LEAD, "r-9", file="hello.wav"),
        OutreachAction("linkedin_like_post", LEAD, "r-10", post="  "),
    ],
    ids=[
        "text-too-long",
        "no-text",
        "inmail-no-subject",
        "inmail-no-text",
        "no-to",
        "unknown-type",
        "no-client-ref",
        "attachment-no-file",
        "attachment-not-http",
        "voice-no-url",
        "like-no-post",
    ],
)
async def test_actions_the_gateway_would_refuse_are_refused_locally(
    client: LinkedInGatewayClient,
    fake: FakeLinkedInGateway,
    sender: SenderIdentity,
    action: OutreachAction,
) -> None:
    with pytest.raises(PermanentChannelError):
        await client.perform(action, sender)

    assert fake.performed == []


@pytest.mark.parametrize("missing", ["account_id", "gateway_url", "api_key"])
async def test_a_seat_without_gateway_settings_is_parked_as_identity_expired(
    fake: FakeLinkedInGateway, missing: str
) -> None:
    settings = {"account_id": SEAT, "gateway_url": fake.gateway_url, "api_key": API_KEY}
    del settings[missing]

    async with LinkedInGatewayClient() as client:
        with pytest.raises(IdentityExpired, match=missing):
            await client.perform(message(), SenderIdentity("linkedin", SEAT, settings))

    assert fake.performed == []


async def test_constructor_defaults_fill_in_for_missing_seat_settings(
    fake: FakeLinkedInGateway,
) -> None:
    sender = SenderIdentity("linkedin", SEAT, {"account_id": SEAT})

    async with LinkedInGatewayClient(fake.gateway_url, API_KEY) as client:
        await client.perform(message(), sender)

    assert len(fake.performed) == 1


async def test_seat_settings_win_over_constructor_defaults(
    fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    async with LinkedInGatewayClient(f"http://127.0.0.1:{free_port()}", "other-key") as client:
        await client.perform(message(), sender)

    assert len(fake.performed) == 1


# --- account status ---------------------------------------------------------------------------


async def test_account_status_reports_the_session_and_the_inmail_credits(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    fresh = await client.account_status(sender)
    fake.expire_session(SEAT)
    fake.set_inmail_credits(SEAT, 0)
    expired = await client.account_status(sender)

    assert (fresh.status, fresh.connected, fresh.inmail_credits) == ("connected", True, 5)
    assert (expired.status, expired.connected, expired.inmail_credits) == ("expired", False, 0)


async def test_account_status_of_an_unknown_seat_is_identity_expired(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway
) -> None:
    with pytest.raises(IdentityExpired):
        await client.account_status(fake.sender("seat-nobody"))


# --- the channel's conversation replies -------------------------------------------------------


async def test_channel_send_replies_as_a_linkedin_message_from_the_reply_seat(
    fake: FakeLinkedInGateway,
) -> None:
    config = LinkedInConfig(fake.gateway_url, API_KEY, reply_account_id=SEAT)
    channel = LinkedInChannel(config)
    try:
        provider_id = await channel.send(LEAD, OutboundMessage("Thanks!"), client_ref="c-9:s-4")
    finally:
        await channel.aclose()

    [action] = fake.performed
    assert (action.id, action.kind, action.idempotency_key) == (provider_id, "message", "c-9:s-4")
    assert action.body == {"to": LEAD, "text": "Thanks!"}


async def test_channel_perform_uses_the_seat_of_the_sender(
    fake: FakeLinkedInGateway, sender: SenderIdentity
) -> None:
    channel = LinkedInChannel(LinkedInConfig())
    try:
        result = await channel.perform(message(), sender)
        status = await channel.account_status(sender)
    finally:
        await channel.aclose()

    assert result.provider_id == fake.performed[0].id
    assert status.connected


async def test_channel_send_refuses_buttons_and_a_missing_reply_seat(
    fake: FakeLinkedInGateway,
) -> None:
    with_seat = LinkedInChannel(LinkedInConfig(fake.gateway_url, API_KEY, reply_account_id=SEAT))
    without_seat = LinkedInChannel(LinkedInConfig(fake.gateway_url, API_KEY))

    with pytest.raises(PermanentChannelError, match="buttons"):
        await with_seat.send(LEAD, OutboundMessage("Pick", (("a", "A"),)), client_ref="b-1")
    with pytest.raises(IdentityExpired, match="reply"):
        await without_seat.send(LEAD, OutboundMessage("Hi"), client_ref="b-2")

    assert fake.performed == []


# --- the standalone process -------------------------------------------------------------------


@pytest.fixture
def standalone_gateway() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "devkit.fakes.linkedin_gateway", "--port", str(port)),
            *("--api-key", API_KEY, "--account", SEAT, "--inmail-credits", "2"),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}")
        try:
            httpx.get(f"{url}/_fake/actions", timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError("the standalone gateway did not come up")


async def test_standalone_gateway_serves_the_contract_and_is_driven_by_control_endpoints(
    standalone_gateway: str,
) -> None:
    sender = seat_at(standalone_gateway)
    async with httpx.AsyncClient(base_url=standalone_gateway) as control:
        connect = await control.post("/_fake/connect", json={"account_id": SEAT, "profile": LEAD})
        assert connect.json() == {"ok": True}
        async with LinkedInGatewayClient() as client:
            sent = await client.perform(message("standalone-1"), sender)
            await control.post("/_fake/expire", json={"account_id": SEAT})
            with pytest.raises(IdentityExpired):
                await client.perform(message("standalone-2"), sender)
        actions = (await control.get("/_fake/actions")).json()
        accounts = (await control.get("/_fake/accounts")).json()

    assert [(a["id"], a["idempotency_key"]) for a in actions] == [
        (sent.provider_id, "standalone-1")
    ]
    assert accounts == [{"account_id": SEAT, "status": "expired", "inmail_credits": 2}]
