"""The gateway's webhooks: signatures (good, bad, missing, stale), each event read into neutral
types and typed events, refusal of malformed bodies, and the fake gateway delivering signed
events to a real loopback receiver."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.fakes.linkedin_payloads import (
    build_invitation_accepted,
    build_message_delivered,
    build_message_received,
    build_session_expired,
    signed_request,
)
from parley.channels.base import InboundBatch, InboundMessage, InboundRole, OutreachAction
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.channels.linkedin.client import LinkedInGatewayClient
from parley.channels.linkedin.wire import (
    SIGNATURE_HEADER,
    GatewayEvent,
    GatewayEventKind,
    parse_events,
    parse_webhook,
    sign,
    verify_signature,
)
from parley.errors import IdentityExpired, InvalidSignature, MalformedPayload

SECRET = "test-webhook-secret"
API_KEY = "test-gateway-key"
SEAT = "seat-ada"
LEAD = "urn:li:fsd_profile:ACoAAB1234567"
TS = 1712345678
WHEN = datetime(2024, 4, 5, 19, 34, 38, tzinfo=UTC)
BODY = b'{"event":"message.received"}'


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def envelope(event: str = "message.received", **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event": event,
        "id": "evt_1",
        "account_id": SEAT,
        "timestamp": TS,
        "data": {"message_id": "msg_in_1", "from": LEAD, "text": "Sure, let's talk"},
    }
    document.update(overrides)
    return document


# --- signatures -------------------------------------------------------------------------------


def test_a_body_signed_with_our_secret_is_accepted() -> None:
    verify_signature(BODY, sign(BODY, SECRET, TS), SECRET, now=TS + 10)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    digest = hmac.new(SECRET.encode(), f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()

    assert sign(BODY, SECRET, TS) == f"t={TS},v1={digest}"


@pytest.mark.parametrize(
    "header",
    [
        sign(BODY, "another-secret", TS),
        sign(BODY + b" ", SECRET, TS),
        sign(BODY, SECRET, TS).replace(f"t={TS}", f"t={TS + 1}"),
    ],
    ids=["wrong-secret", "tampered-body", "tampered-timestamp"],
)
def test_a_bad_signature_is_refused(header: str) -> None:
    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(BODY, header, SECRET, now=TS)


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_signature_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidSignature, match="missing"):
        verify_signature(BODY, header, SECRET, now=TS)


@pytest.mark.parametrize(
    "header",
    [
        "v1=" + "a" * 64,
        f"t={TS}",
        f"t={TS},v1=nothex",
        f"t=yesterday,v1={'a' * 64}",
        f"t={TS},t={TS},v1={'a' * 64}",
        f"sha256={'a' * 64}",
    ],
    ids=["no-t", "no-v1", "short-digest", "t-not-a-number", "two-t", "other-scheme"],
)
def test_a_malformed_signature_header_is_refused(header: str) -> None:
    with pytest.raises(InvalidSignature, match="malformed"):
        verify_signature(BODY, header, SECRET, now=TS)


def test_a_signature_older_than_five_minutes_is_refused_as_a_replay() -> None:
    header = sign(BODY, SECRET, TS)

    verify_signature(BODY, header, SECRET, now=TS + 300)
    with pytest.raises(InvalidSignature, match="outside"):
        verify_signature(BODY, header, SECRET, now=TS + 301)


def test_a_signature_from_more_than_five_minutes_ahead_is_refused() -> None:
    with pytest.raises(InvalidSignature, match="outside"):
        verify_signature(BODY, sign(BODY, SECRET, TS + 301), SECRET, now=TS)


def test_one_valid_digest_among_several_is_accepted_for_secret_rotation() -> None:
    good = sign(BODY, SECRET, TS).split("v1=")[1]

    verify_signature(BODY, f"t={TS},v1={'0' * 64},v1={good.upper()}", SECRET, now=TS)


def test_an_empty_secret_refuses_everything() -> None:
    with pytest.raises(InvalidSignature, match="not configured"):
        verify_signature(BODY, sign(BODY, "", TS), "", now=TS)


def test_the_channel_verifies_with_its_secret_whatever_the_header_case() -> None:
    channel = LinkedInChannel(LinkedInConfig(webhook_secret=SECRET))
    raw, headers = signed_request(envelope(), SECRET)

    channel.verify(raw, headers)
    channel.verify(raw, {SIGNATURE_HEADER.lower(): headers[SIGNATURE_HEADER]})
    with pytest.raises(InvalidSignature):
        channel.verify(raw, {})
    with pytest.raises(InvalidSignature):
        LinkedInChannel(LinkedInConfig(webhook_secret="other")).verify(raw, headers)


# --- each event -------------------------------------------------------------------------------


def test_message_received_is_an_answer_from_the_sender_to_the_seat() -> None:
    payload = envelope(
        data={
            "message_id": "msg_in_1",
            "chat_id": "chat_9",
            "from": LEAD,
            "from_name": "Grace Hopper",
            "text": "Sure, let's talk",
            "reply_to": "msg_ours_1",
        }
    )

    batch = parse_webhook(body_of(payload))

    assert batch.statuses == [] and batch.ignored == []
    assert batch.messages == [
        InboundMessage(
            channel="linkedin",
            provider_message_id="msg_in_1",
            identity_address=SEAT,
            contact_address=LEAD,
            contact_name="Grace Hopper",
            type="text",
            role=InboundRole.ANSWER,
            text="Sure, let's talk",
            reply_id=None,
            context_message_id="msg_ours_1",
            timestamp=WHEN,
            raw=payload,
        )
    ]
    assert batch.messages[0].raw == payload


def test_a_message_without_text_is_recorded_but_answers_nothing() -> None:
    payload = build_message_received(account_id=SEAT, from_profile=LEAD, text=None)

    [inbound] = parse_webhook(body_of(payload)).messages

    assert (inbound.type, inbound.role, inbound.text) == (
        "unsupported",
        InboundRole.UNSUPPORTED,
        None,
    )
    assert inbound.contact_name is None


def test_message_delivered_is_a_delivered_status_with_our_client_ref() -> None:
    payload = build_message_delivered(
        account_id=SEAT, message_id="msg_ours_1", to=LEAD, client_ref="conv-1:step-2", timestamp=TS
    )

    batch = parse_webhook(body_of(payload))

    assert batch.messages == [] and batch.ignored == []
    [status] = batch.statuses
    assert (status.channel, status.provider_message_id, status.identity_address) == (
        "linkedin",
        "msg_ours_1",
        SEAT,
    )
    assert (status.status, status.recipient, status.client_ref) == (
        "delivered",
        LEAD,
        "conv-1:step-2",
    )
    assert status.timestamp == WHEN


@pytest.mark.parametrize(
    ("payload", "kind", "contact"),
    [
        (
            build_invitation_accepted(
                account_id=SEAT, profile=LEAD, invitation_id="inv_1", client_ref="c-1"
            ),
            "connection_accepted",
            LEAD,
        ),
        (build_session_expired(account_id=SEAT, reason="logged out"), "session_expired", None),
    ],
    ids=["invitation.accepted", "account.session_expired"],
)
def test_events_that_are_not_messages_are_ignored_with_their_kind_and_data(
    payload: dict[str, Any], kind: str, contact: str | None
) -> None:
    batch = parse_webhook(body_of(payload))

    assert batch.messages == [] and batch.statuses == []
    assert batch.ignored == [
        {
            "channel": "linkedin",
            "kind": kind,
            "event": payload["event"],
            "event_id": payload["id"],
            "account_id": SEAT,
            "contact": contact,
            "reason": "not a message",
            "data": payload["data"],
        }
    ]


@pytest.mark.parametrize(
    ("payload", "kind", "contact"),
    [
        (envelope(), GatewayEventKind.MESSAGE_RECEIVED, LEAD),
        (
            build_message_delivered(account_id=SEAT, message_id="m", to=LEAD, client_ref="c"),
            GatewayEventKind.MESSAGE_DELIVERED,
            LEAD,
        ),
        (
            build_invitation_accepted(account_id=SEAT, profile=LEAD),
            GatewayEventKind.CONNECTION_ACCEPTED,
            LEAD,
        ),
        (build_session_expired(account_id=SEAT), GatewayEventKind.SESSION_EXPIRED, None),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_parse_events_types_every_event_for_the_route(
    payload: dict[str, Any], kind: GatewayEventKind, contact: str | None
) -> None:
    [event] = parse_events(body_of(payload))

    assert event == GatewayEvent(
        kind=kind,
        account_id=SEAT,
        contact=contact,
        event_id=payload["id"],
        data=payload["data"],
        timestamp=datetime.fromtimestamp(payload["timestamp"], tz=UTC),
    )
    assert event.data == payload["data"]


def test_an_unknown_event_is_ignored_not_refused() -> None:
    payload = envelope("message.read", data={"message_id": "m"})

    batch = parse_webhook(body_of(payload))

    assert parse_events(body_of(payload)) == []
    assert [(i["kind"], i["event"]) for i in batch.ignored] == [("unknown", "message.read")]
    assert batch.messages == [] and batch.statuses == []


def test_an_event_without_data_is_read_as_empty_data() -> None:
    payload = build_session_expired(account_id=SEAT)
    del payload["data"]

    [event] = parse_events(body_of(payload))

    assert event.data == {}


# --- malformed bodies -------------------------------------------------------------------------


def _without(key: str) -> dict[str, Any]:
    document = envelope()
    del document[key]
    return document


def _data(**data: Any) -> dict[str, Any]:
    return envelope(data={"from": LEAD, **data})


def _nested(levels: int) -> Any:
    nested: Any = "deep"
    for _ in range(levels):
        nested = [nested]
    return nested


MALFORMED: dict[str, bytes] = {
    "not-json": b"event=message.received",
    "not-utf8": b'{"event": "\xff"}',
    "empty": b"",
    "array": b"[]",
    "string": b'"message.received"',
    "no-event": body_of(_without("event")),
    "event-not-a-string": body_of(envelope(event=7)),
    "no-account": body_of(_without("account_id")),
    "no-id": body_of(_without("id")),
    "no-timestamp": body_of(_without("timestamp")),
    "bool-timestamp": body_of(envelope(timestamp=True)),
    "text-timestamp": body_of(envelope(timestamp="yesterday")),
    "huge-timestamp": body_of(envelope(timestamp=10**30)),
    "data-not-an-object": body_of(envelope(data=["hi"])),
    "message-without-sender": body_of(envelope(data={"message_id": "m", "text": "hi"})),
    "message-without-id": body_of(_data(text="hi")),
    "text-not-a-string": body_of(_data(message_id="m", text=42)),
    "delivered-without-id": body_of(envelope("message.delivered", data={"to": LEAD})),
    "delivered-client-ref-not-a-string": body_of(
        envelope("message.delivered", data={"message_id": "m", "client_ref": 5})
    ),
    "accepted-without-profile": body_of(envelope("invitation.accepted", data={})),
    "unknown-event-without-account": body_of(
        {"event": "message.read", "id": "e", "timestamp": TS, "data": {}}
    ),
    "deeper-than-the-parser-allows": b"[" * 100_000 + b"]" * 100_000,
    "deeper-than-16-levels": body_of(_data(message_id="m", text="hi", x=_nested(15))),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bodies_are_refused_before_anything_is_read(raw: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_webhook(raw)
    with pytest.raises(MalformedPayload):
        parse_events(raw)


def test_a_body_nested_sixteen_levels_is_still_read() -> None:
    # envelope (1) + data (2) + 14 lists = 16 levels
    payload = _data(message_id="m", text="hi", x=_nested(14))

    assert len(parse_webhook(body_of(payload)).messages) == 1


# --- the fake gateway delivers signed events to a real receiver -------------------------------


@dataclass
class WebhookReceiver:
    """Plays Parley's webhook route: verifies each POST through the channel, keeps what it read."""

    channel: LinkedInChannel
    url: str = ""
    failures_to_give: int = 0
    batches: list[InboundBatch] = field(default_factory=list)
    events: list[GatewayEvent] = field(default_factory=list)
    refused: int = 0
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def receive(self, raw: bytes, headers: dict[str, str]) -> int:
        with self.arrived:
            if self.failures_to_give > 0:
                self.failures_to_give -= 1
                return 503
            try:
                self.channel.verify(raw, headers)
            except InvalidSignature:
                self.refused += 1
                return 401
            self.batches.append(self.channel.parse(raw))
            self.events.extend(self.channel.events(raw))
            self.arrived.notify_all()
            return 200

    def wait_for_events(self, n: int, timeout: float = 5.0) -> list[GatewayEvent]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.events) >= n, timeout)
            return list(self.events)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver(LinkedInChannel(LinkedInConfig(webhook_secret=SECRET)))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(state.receive(raw, dict(self.headers.items())))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/linkedin"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake(receiver: WebhookReceiver) -> Iterator[FakeLinkedInGateway]:
    gateway = FakeLinkedInGateway(
        api_key=API_KEY, accounts=[SEAT], webhook_url=receiver.url, webhook_secret=SECRET
    )
    with gateway:
        yield gateway


@pytest.fixture
async def client() -> AsyncIterator[LinkedInGatewayClient]:
    async with LinkedInGatewayClient(timeout=5.0) as gateway_client:
        yield gateway_client


async def test_a_lead_writing_arrives_signed_as_an_inbound_answer(
    fake: FakeLinkedInGateway, receiver: WebhookReceiver
) -> None:
    delivery = fake.deliver_message(SEAT, LEAD, "Interested!", from_name="Grace Hopper")

    assert await asyncio.to_thread(delivery.wait, 5.0)
    [batch] = receiver.batches
    [inbound] = batch.messages
    assert (inbound.identity_address, inbound.contact_address, inbound.text) == (
        SEAT,
        LEAD,
        "Interested!",
    )
    assert inbound.contact_name == "Grace Hopper"
    assert inbound.provider_message_id == delivery.event["data"]["message_id"]
    assert receiver.refused == 0


async def test_a_message_we_send_is_reported_delivered_with_its_client_ref(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, receiver: WebhookReceiver
) -> None:
    fake.connect(SEAT, LEAD)
    action = OutreachAction("linkedin_message", LEAD, "conv-3:step-1", text="Hello")

    result = await client.perform(action, fake.sender(SEAT))
    [event] = await asyncio.to_thread(receiver.wait_for_events, 1)

    assert event.kind is GatewayEventKind.MESSAGE_DELIVERED
    [status] = receiver.batches[0].statuses
    assert (status.provider_message_id, status.client_ref, status.recipient) == (
        result.provider_id,
        "conv-3:step-1",
        LEAD,
    )


async def test_a_replayed_message_is_reported_delivered_once(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, receiver: WebhookReceiver
) -> None:
    fake.connect(SEAT, LEAD)
    action = OutreachAction("linkedin_message", LEAD, "conv-4:step-1", text="Hello")

    await client.perform(action, fake.sender(SEAT))
    await client.perform(action, fake.sender(SEAT))
    marker = fake.deliver_message(SEAT, LEAD, "after")
    assert await asyncio.to_thread(marker.wait, 5.0)

    assert [e.kind for e in receiver.events] == [
        GatewayEventKind.MESSAGE_DELIVERED,
        GatewayEventKind.MESSAGE_RECEIVED,
    ]


async def test_an_accepted_invitation_carries_our_invitation_and_opens_messaging(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, receiver: WebhookReceiver
) -> None:
    sender = fake.sender(SEAT)
    invitation = await client.perform(
        OutreachAction("linkedin_connection", LEAD, "conv-5:invite", text="Hi!"), sender
    )

    delivery = fake.accept_invitation(SEAT, LEAD)
    assert await asyncio.to_thread(delivery.wait, 5.0)
    await client.perform(OutreachAction("linkedin_message", LEAD, "conv-5:m1", text="Hi"), sender)

    event = receiver.events[0]
    assert (event.kind, event.account_id, event.contact) == (
        GatewayEventKind.CONNECTION_ACCEPTED,
        SEAT,
        LEAD,
    )
    assert event.data == {
        "profile": LEAD,
        "invitation_id": invitation.provider_id,
        "client_ref": "conv-5:invite",
    }
    assert receiver.batches[0].ignored[0]["kind"] == "connection_accepted"
    assert [a.kind for a in fake.actions_to(LEAD)] == ["invitation", "message"]


async def test_an_announced_session_expiry_arrives_and_parks_later_actions(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, receiver: WebhookReceiver
) -> None:
    delivery = fake.announce_session_expired(SEAT)

    assert await asyncio.to_thread(delivery.wait, 5.0)
    [event] = receiver.events
    assert (event.kind, event.account_id, event.contact) == (
        GatewayEventKind.SESSION_EXPIRED,
        SEAT,
        None,
    )
    with pytest.raises(IdentityExpired):
        await client.perform(OutreachAction("linkedin_profile_visit", LEAD, "v"), fake.sender(SEAT))


async def test_refused_deliveries_are_retried_and_re_signed(
    fake: FakeLinkedInGateway, receiver: WebhookReceiver
) -> None:
    receiver.failures_to_give = 2

    delivery = fake.deliver_message(SEAT, LEAD, "third time lucky")

    assert await asyncio.to_thread(delivery.wait, 5.0)
    assert (delivery.attempts, delivery.status) == (3, 200)
    assert [b.messages[0].text for b in receiver.batches] == ["third time lucky"]


async def test_a_held_answer_comes_after_the_delivered_webhook(
    client: LinkedInGatewayClient, fake: FakeLinkedInGateway, receiver: WebhookReceiver
) -> None:
    fake.connect(SEAT, LEAD)
    fake.hold_next(1.0)
    action = OutreachAction("linkedin_message", LEAD, "held-1", text="Hello")

    sending = asyncio.create_task(client.perform(action, fake.sender(SEAT)))
    [event] = await asyncio.to_thread(receiver.wait_for_events, 1)

    assert not sending.done()
    assert event.data["client_ref"] == "held-1"
    assert (await sending).provider_id == event.data["message_id"]


async def test_control_endpoints_deliver_events_for_other_processes(
    fake: FakeLinkedInGateway, receiver: WebhookReceiver
) -> None:
    async with httpx.AsyncClient(base_url=fake.gateway_url, timeout=15) as control:
        answer = await control.post(
            "/_fake/deliver-message",
            json={"account_id": SEAT, "from_profile": LEAD, "text": "via control"},
        )
        accepted = await control.post(
            "/_fake/accept-invitation", json={"account_id": SEAT, "profile": LEAD}
        )
        bad = await control.post("/_fake/connect", json={"account_id": "nobody", "profile": LEAD})

    assert answer.json()["ok"] and answer.json()["delivered"] and answer.json()["status"] == 200
    assert accepted.json()["delivered"]
    assert bad.status_code == 400
    assert [e.kind for e in receiver.events] == [
        GatewayEventKind.MESSAGE_RECEIVED,
        GatewayEventKind.CONNECTION_ACCEPTED,
    ]
    assert LEAD in fake.account(SEAT).connections


def test_delivering_without_a_webhook_configured_is_an_error_not_a_silent_drop() -> None:
    with FakeLinkedInGateway() as gateway, pytest.raises(RuntimeError, match="webhook"):
        gateway.deliver_message("demo-seat", LEAD, "hello?")
