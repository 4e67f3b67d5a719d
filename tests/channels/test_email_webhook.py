"""The inbound-email webhook: signatures with replay protection, replies with their quoted
history stripped, and delivery events read back to the action they are about."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from devkit.fakes.email_payloads import (
    build_bounce,
    build_delivery_event,
    build_inbound_reply,
    sign_inbound,
    signed_request,
)
from parley.channels.base import InboundRole
from parley.channels.email.channel import EmailChannel, EmailConfig
from parley.channels.email.wire import (
    SIGNATURE_HEADER,
    message_id_for,
    parse_inbound,
    sign,
    strip_quoted,
    verify_signature,
)
from parley.errors import ConfigurationError, InvalidSignature, MalformedPayload
from parley.vocabulary import DeliveryStatus

SECRET = "test-webhook-secret"
MAILBOX = "ada@parley.example"
LEAD = "bob@example.com"
NOW = 1712345678
WHEN = datetime(2024, 4, 5, 19, 34, 38, tzinfo=UTC)
OUR_MESSAGE_ID = message_id_for("conv-42:step-3", "parley.example")


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def reply(**fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"recipient": MAILBOX, "sender": LEAD, "text": "Yes, it's me."}
    return build_inbound_reply(**(values | {"timestamp": NOW} | fields))


# --- signatures -------------------------------------------------------------------------------


def test_a_body_signed_with_our_secret_just_now_is_accepted() -> None:
    body = body_of(reply())

    verify_signature(body, sign_inbound(body, SECRET, NOW), SECRET, now=NOW + 299)


def test_the_signature_is_an_hmac_of_timestamp_dot_body() -> None:
    # echo -n '1712345678.{"a":1}' | openssl dgst -sha256 -hmac test-webhook-secret
    assert sign(b'{"a":1}', SECRET, NOW) == (
        "t=1712345678,v1=cabffe86d7a4b1496a9d25aaacae925dea85f2bc154b2d1a74e411d59428d383"
    )


def test_a_second_v1_lets_a_relay_rotate_its_secret() -> None:
    body = body_of(reply())
    old = sign_inbound(body, "old-secret", NOW).split(",")[1]
    header = f"{old},{sign_inbound(body, SECRET, NOW)}"

    verify_signature(body, header, SECRET, now=NOW)


@pytest.mark.parametrize("header", [None, ""])
def test_a_missing_signature_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidSignature, match="missing"):
        verify_signature(body_of(reply()), header, SECRET, now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "sha256=abc",
        "v1=" + "0" * 64,
        f"t={NOW}",
        f"t=yesterday,v1={'0' * 64}",
        f"t={NOW},t={NOW},v1={'0' * 64}",
        f"t={NOW},v1=not-hex",
        f"t={NOW},v1={'0' * 63}",
    ],
)
def test_a_malformed_signature_is_refused(header: str) -> None:
    with pytest.raises(InvalidSignature, match="malformed"):
        verify_signature(body_of(reply()), header, SECRET, now=NOW)


def test_a_signature_with_another_secret_is_refused() -> None:
    body = body_of(reply())

    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(body, sign_inbound(body, "not-our-secret", NOW), SECRET, now=NOW)


def test_a_tampered_body_is_refused() -> None:
    header = sign_inbound(body_of(reply()), SECRET, NOW)

    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(body_of(reply(text="Send me your invoices")), header, SECRET, now=NOW)


def test_a_re_timestamped_signature_is_refused() -> None:
    body = body_of(reply())
    digest = sign_inbound(body, SECRET, NOW).split(",")[1]

    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(body, f"t={NOW + 600},{digest}", SECRET, now=NOW + 600)


@pytest.mark.parametrize("age", [301, 3600, -301])
def test_a_signature_older_than_five_minutes_or_from_the_future_is_refused(age: int) -> None:
    body = body_of(reply())

    with pytest.raises(InvalidSignature, match="replay"):
        verify_signature(body, sign_inbound(body, SECRET, NOW), SECRET, now=NOW + age)


def test_an_empty_secret_is_a_configuration_error() -> None:
    body = body_of(reply())

    with pytest.raises(ConfigurationError):
        verify_signature(body, sign_inbound(body, SECRET, NOW), "", now=NOW)


def test_the_channel_verifies_with_its_configured_secret_and_any_header_case() -> None:
    channel = EmailChannel(EmailConfig(webhook_secret=SECRET))
    body, headers = signed_request(reply(), SECRET)

    channel.verify(body, headers)
    channel.verify(body, {SIGNATURE_HEADER.lower(): headers[SIGNATURE_HEADER]})
    with pytest.raises(InvalidSignature):
        channel.verify(body, {})


# --- replies ----------------------------------------------------------------------------------


def test_a_reply_becomes_a_neutral_answer() -> None:
    payload = reply(
        sender="Bob.Smith@Example.COM",
        from_name="Bob Smith",
        subject="Re: Quick question",
        message_id="<CAF=abc123@mail.gmail.com>",
        in_reply_to=OUR_MESSAGE_ID,
        quoted="Hi Bob,\nare you the right person?",
    )

    [message] = parse_inbound(body_of(payload)).messages

    assert message.channel == "email"
    assert message.type == "email"
    assert message.role is InboundRole.ANSWER
    assert message.identity_address == MAILBOX
    assert message.contact_address == "bob.smith@example.com"
    assert message.contact_name == "Bob Smith"
    assert message.provider_message_id == "<CAF=abc123@mail.gmail.com>"
    assert message.context_message_id == OUR_MESSAGE_ID
    assert message.text == "Yes, it's me."
    assert message.reply_id is None
    assert message.timestamp == WHEN
    assert message.raw == payload


def test_message_ids_without_brackets_are_normalized() -> None:
    payload = reply(message_id="abc@mail.example.com", in_reply_to="conv-1@parley.example")

    [message] = parse_inbound(body_of(payload)).messages

    assert message.provider_message_id == "<abc@mail.example.com>"
    assert message.context_message_id == "<conv-1@parley.example>"


def test_a_sender_with_a_display_name_is_reduced_to_the_address() -> None:
    [message] = parse_inbound(body_of(reply(sender="Bob <BOB@example.com>"))).messages

    assert message.contact_address == LEAD


def test_a_fresh_email_has_no_context_and_no_name() -> None:
    [message] = parse_inbound(body_of(reply(in_reply_to=None, from_name=None))).messages

    assert (message.context_message_id, message.contact_name) == (None, None)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Yes, Thursday works.", "Yes, Thursday works."),
        (
            "Yes, Thursday works.\n\nOn Mon, 8 Apr 2024 at 09:15, Ada <ada@parley.example> wrote:\n"
            "> Does Thursday work?\n",
            "Yes, Thursday works.",
        ),
        (
            "Sounds good\r\n\r\nOn Mon, 8 Apr 2024 at 09:15, Ada Lovelace\r\n"
            "<ada@parley.example> wrote:\r\n\r\n> Does Thursday work?\r\n",
            "Sounds good",
        ),
        (
            "> Does Thursday work?\nThursday is fine\n> Or Friday?\nFriday too",
            "Thursday is fine\nFriday too",
        ),
        ("Call me.\n\n-- \nBob Smith\nCFO, Example Inc.", "Call me."),
        (
            "Not interested.\n\n-----Original Message-----\nFrom: Ada\nSubject: Quick question",
            "Not interested.",
        ),
        ("On second thought, yes.", "On second thought, yes."),
        ("> only quoted text\n>\n", None),
        ("", None),
    ],
)
def test_quoted_history_and_signatures_are_stripped(text: str, answer: str | None) -> None:
    assert strip_quoted(text) == answer
    [message] = parse_inbound(body_of(reply(text=text))).messages
    assert message.text == answer


# --- delivery events --------------------------------------------------------------------------


def test_a_bounce_of_our_message_is_a_failed_status_with_our_client_ref() -> None:
    payload = build_bounce(
        message_id=OUR_MESSAGE_ID, sender=MAILBOX, recipient=LEAD, code=550, timestamp=NOW
    )

    batch = parse_inbound(body_of(payload))

    assert (batch.messages, batch.ignored) == ([], [])
    [status] = batch.statuses
    assert status.channel == "email"
    assert status.status == DeliveryStatus.FAILED
    assert status.provider_message_id == OUR_MESSAGE_ID
    assert status.client_ref == "conv-42:step-3"
    assert (status.identity_address, status.recipient) == (MAILBOX, LEAD)
    assert status.timestamp == WHEN
    assert status.errors == [
        {"code": 550, "title": "550 5.1.1 The email account that you tried to reach does not exist"}
    ]
    assert status.error_summary is not None and status.error_summary.startswith("550: 550 5.1.1")


def test_a_complaint_is_a_failed_status() -> None:
    payload = build_delivery_event(
        "complained", message_id=OUR_MESSAGE_ID, sender=MAILBOX, recipient=LEAD, timestamp=NOW
    )

    [status] = parse_inbound(body_of(payload)).statuses

    assert status.status == DeliveryStatus.FAILED
    assert status.errors == [{"code": None, "title": "complained"}]


def test_a_delivery_is_a_delivered_status_without_errors() -> None:
    payload = build_delivery_event(
        "delivered", message_id=OUR_MESSAGE_ID, sender=MAILBOX, recipient=LEAD, timestamp=NOW
    )

    [status] = parse_inbound(body_of(payload)).statuses

    assert (status.status, status.errors, status.client_ref) == (
        DeliveryStatus.DELIVERED,
        [],
        "conv-42:step-3",
    )


@pytest.mark.parametrize(
    "message_id",
    [
        "<CAF=abc123@mail.gmail.com>",  # another domain
        "<a.b@parley.example>",  # our domain, but not our encoding
        "<%ZZ@parley.example>",  # not decodable
    ],
)
def test_a_bounce_of_a_message_that_is_not_ours_has_no_client_ref(message_id: str) -> None:
    payload = build_bounce(message_id=message_id, sender=MAILBOX, recipient=LEAD)

    [status] = parse_inbound(body_of(payload)).statuses

    assert (status.client_ref, status.provider_message_id) == (None, message_id)


def test_events_we_do_not_handle_are_ignored_not_refused() -> None:
    payload = build_delivery_event(
        "opened", message_id=OUR_MESSAGE_ID, sender=MAILBOX, recipient=LEAD
    )

    batch = parse_inbound(body_of(payload))

    assert (batch.messages, batch.statuses) == ([], [])
    assert [(i["channel"], i["kind"], i["event"]) for i in batch.ignored] == [
        ("email", "ignored_event", "opened")
    ]


# --- malformed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "not JSON"),
        (b"recipient=ada@parley.example", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b'["a reply"]', "JSON list"),
        (b"null", "JSON NoneType"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_malformed(body: bytes, match: str) -> None:
    with pytest.raises(MalformedPayload, match=match):
        parse_inbound(body)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"message_id": None}, "'message_id'"),
        ({"message_id": "<>"}, "'message_id' is empty"),
        ({"recipient": None}, "'recipient'"),
        ({"sender": "bob at example"}, "'sender' is not an email address"),
        ({"sender": {"address": LEAD}}, "'sender'"),
        ({"text": None}, "'text'"),
        ({"text": ["Yes"]}, "'text'"),
        ({"from_name": 42}, "'from_name' must be a string"),
        ({"in_reply_to": {"id": "x"}}, "'in_reply_to' must be a string"),
        ({"timestamp": "yesterday"}, "invalid timestamp"),
        ({"timestamp": None}, "invalid timestamp"),
        ({"timestamp": True}, "invalid timestamp"),
        ({"timestamp": 10**20}, "invalid timestamp"),
    ],
)
def test_a_reply_with_a_missing_or_wrong_field_is_malformed(
    changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(MalformedPayload, match=match):
        parse_inbound(body_of(reply() | changes))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"event": ["bounced"]}, "'event'"),
        ({"sender": None}, "'sender'"),
        ({"recipient": "nobody"}, "'recipient' is not an email address"),
        ({"message_id": 42}, "'message_id'"),
        ({"reason": {"text": "gone"}}, "'reason' must be a string"),
    ],
)
def test_a_delivery_event_with_a_missing_or_wrong_field_is_malformed(
    changes: dict[str, Any], match: str
) -> None:
    payload = build_bounce(message_id=OUR_MESSAGE_ID, sender=MAILBOX, recipient=LEAD)

    with pytest.raises(MalformedPayload, match=match):
        parse_inbound(body_of(payload | changes))


def test_fractional_and_string_timestamps_are_read() -> None:
    for value in (NOW + 0.25, str(NOW)):
        [message] = parse_inbound(body_of(reply(timestamp=None) | {"timestamp": value})).messages
        assert message.timestamp.replace(microsecond=0) == WHEN


def test_the_channel_parses_like_the_wire_functions() -> None:
    body = body_of(reply())

    assert EmailChannel().parse(body) == parse_inbound(body)
