"""Webhook signature checks and parsing, over payloads shaped like the examples in Meta's docs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from devkit.fakes.whatsapp_payloads import (
    build_button_reply_payload,
    build_status_payload,
    build_text_message_payload,
    status_error,
)
from parley.channels.base import InboundMessage, InboundRole, StatusUpdate
from parley.channels.whatsapp.wire import parse_webhook, sign, verify_signature
from parley.errors import ConfigurationError, InvalidSignature, MalformedPayload

SECRET = "test-app-secret"
PHONE_NUMBER_ID = "106540352242922"
OTHER_PHONE_NUMBER_ID = "106540352242999"
USER = "16315551234"
OUR_WAMID = "wamid.HBgLMTYzMTU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
TS = "1712345678"
WHEN = datetime(2024, 4, 5, 19, 34, 38, tzinfo=UTC)


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def value(phone_number_id: str = PHONE_NUMBER_ID, **parts: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
        **parts,
    }


def message(kind: str, wamid: str, **content: Any) -> dict[str, Any]:
    return {"from": USER, "id": wamid, "timestamp": TS, "type": kind, **content}


CONTACTS = [{"profile": {"name": "Kerry Fisher"}, "wa_id": USER}]
CONTEXT = {"from": "15550783881", "id": OUR_WAMID}

USER_MESSAGES = [
    message("text", "wamid.text", text={"body": "Hello there"}),
    message(
        "interactive",
        "wamid.button_reply",
        context=CONTEXT,
        interactive={"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}},
    ),
    message(
        "interactive",
        "wamid.list_reply",
        context=CONTEXT,
        interactive={
            "type": "list_reply",
            "list_reply": {"id": "plan-pro", "title": "Pro", "description": "For teams"},
        },
    ),
    message("button", "wamid.button", context=CONTEXT, button={"text": "Stop", "payload": "STOP"}),
    message(
        "image",
        "wamid.image",
        image={
            "caption": "My receipt",
            "mime_type": "image/jpeg",
            "sha256": "d9c0a2b5e2b1f0c3a6f0c9e6b7a2c4d1e8f3a5b6c7d8e9f0a1b2c3d4e5f6a7b8",
            "id": "1003383421387256",
        },
    ),
    message(
        "location",
        "wamid.location",
        location={
            "latitude": 52.516275,
            "longitude": 13.377704,
            "name": "Brandenburg Gate",
            "address": "Pariser Platz, 10117 Berlin",
        },
    ),
    message(
        "contacts",
        "wamid.contacts",
        contacts=[
            {
                "name": {"first_name": "Ada", "last_name": "Lovelace", "formatted_name": "Ada L"},
                "phones": [{"phone": "+44 20 7946 0958", "type": "WORK"}],
            }
        ],
    ),
    message("reaction", "wamid.reaction", reaction={"message_id": OUR_WAMID, "emoji": "👍"}),
    message("text", "wamid.reply", context=CONTEXT, text={"body": "This one"}),
]

SYSTEM_AND_UNSUPPORTED = [
    message(
        "system",
        "wamid.system",
        system={
            "body": "User A changed from 16315551234 to 16315550000",
            "wa_id": "16315550000",
            "type": "user_changed_number",
        },
    ),
    message(
        "unsupported",
        "wamid.unsupported",
        errors=[
            {
                "code": 131051,
                "title": "Message type unknown",
                "message": "Message type unknown",
                "error_data": {"details": "Message type is currently not supported."},
            }
        ],
    ),
]

STATUSES = [
    {
        "id": OUR_WAMID,
        "status": "sent",
        "timestamp": TS,
        "recipient_id": USER,
        "biz_opaque_callback_data": "conv-1:step-1",
        "conversation": {
            "id": "CONVERSATION_ID",
            "expiration_timestamp": "1712432078",
            "origin": {"type": "service"},
        },
        "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
    },
    {
        "id": OUR_WAMID,
        "status": "delivered",
        "timestamp": TS,
        "recipient_id": USER,
        "conversation": {"id": "CONVERSATION_ID", "origin": {"type": "service"}},
        "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
    },
    {"id": OUR_WAMID, "status": "read", "timestamp": TS, "recipient_id": USER},
    {
        "id": "wamid.failed",
        "status": "failed",
        "timestamp": TS,
        "recipient_id": USER,
        "biz_opaque_callback_data": "conv-1:step-2",
        "errors": [
            {
                "code": 131047,
                "title": "Re-engagement message",
                "message": "Re-engagement message",
                "error_data": {
                    "details": "Message failed to send because more than 24 hours have passed "
                    "since the customer last replied to this number."
                },
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ],
    },
]

BIG_PAYLOAD = {
    "object": "whatsapp_business_account",
    "entry": [
        {
            "id": "102290129340398",
            "changes": [
                {"value": value(contacts=CONTACTS, messages=USER_MESSAGES), "field": "messages"},
                {"value": value(statuses=STATUSES[:2]), "field": "messages"},
            ],
        },
        {
            "id": "102290129340399",
            "changes": [
                {
                    "value": {
                        "phone_number": "15550783881",
                        "event": "VERIFIED_ACCOUNT",
                    },
                    "field": "account_update",
                },
                {
                    "value": value(OTHER_PHONE_NUMBER_ID, messages=SYSTEM_AND_UNSUPPORTED),
                    "field": "messages",
                },
                {"value": value(statuses=STATUSES[2:]), "field": "messages"},
            ],
        },
    ],
}


# --- signatures -------------------------------------------------------------------------------


def test_a_body_signed_with_our_secret_is_accepted() -> None:
    raw = body_of(BIG_PAYLOAD)

    verify_signature(raw, sign(raw, SECRET), SECRET)


def test_uppercase_hex_is_accepted() -> None:
    raw = b'{"object":"whatsapp_business_account","entry":[]}'
    header = sign(raw, SECRET)

    verify_signature(raw, "sha256=" + header.removeprefix("sha256=").upper(), SECRET)


def test_sign_matches_a_known_vector() -> None:
    # HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), a classic test vector.
    header = sign(b"The quick brown fox jumps over the lazy dog", "key")

    assert header == "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"


@pytest.mark.parametrize("header", [None, ""])
def test_missing_signature_is_refused(header: str | None) -> None:
    with pytest.raises(InvalidSignature, match="missing"):
        verify_signature(b"{}", header, SECRET)


@pytest.mark.parametrize(
    "header",
    [
        "abc",
        "sha1=" + "0" * 40,
        "sha256=",
        "sha256=" + "z" * 64,
        "sha256=" + "0" * 63,
        "sha256:" + "0" * 64,
    ],
)
def test_malformed_signature_is_refused(header: str) -> None:
    with pytest.raises(InvalidSignature, match="malformed"):
        verify_signature(b"{}", header, SECRET)


def test_wrong_signature_is_refused() -> None:
    raw = body_of(BIG_PAYLOAD)

    with pytest.raises(InvalidSignature, match="does not match"):
        verify_signature(raw, sign(raw, "someone-elses-secret"), SECRET)


def test_a_tampered_body_is_refused() -> None:
    raw = body_of(BIG_PAYLOAD)
    header = sign(raw, SECRET)

    with pytest.raises(InvalidSignature):
        verify_signature(raw.replace(b"Hello there", b"Hello thera"), header, SECRET)


def test_an_empty_app_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        verify_signature(b"{}", sign(b"{}", "x"), "")


# --- parsing the big multi-entry payload ------------------------------------------------------


@pytest.fixture(scope="module")
def parsed_messages() -> dict[str, InboundMessage]:
    batch = parse_webhook(body_of(BIG_PAYLOAD))
    return {m.provider_message_id: m for m in batch.messages}


def test_every_message_of_every_change_is_read_in_order() -> None:
    batch = parse_webhook(body_of(BIG_PAYLOAD))

    assert [m.provider_message_id for m in batch.messages] == [
        m["id"] for m in USER_MESSAGES + SYSTEM_AND_UNSUPPORTED
    ]


def test_text_message(parsed_messages: dict[str, InboundMessage]) -> None:
    assert parsed_messages["wamid.text"] == InboundMessage(
        channel="whatsapp",
        provider_message_id="wamid.text",
        identity_address=PHONE_NUMBER_ID,
        contact_address=USER,
        contact_name="Kerry Fisher",
        type="text",
        role=InboundRole.ANSWER,
        text="Hello there",
        reply_id=None,
        context_message_id=None,
        timestamp=WHEN,
        raw=USER_MESSAGES[0],
    )


@pytest.mark.parametrize(
    ("wamid", "kind", "text", "reply_id", "context_message_id"),
    [
        ("wamid.button_reply", "interactive", "Yes", "yes", OUR_WAMID),
        ("wamid.list_reply", "interactive", "Pro", "plan-pro", OUR_WAMID),
        ("wamid.button", "button", "Stop", "STOP", OUR_WAMID),
        ("wamid.image", "image", "My receipt", None, None),
        ("wamid.location", "location", "52.516275,13.377704 (Brandenburg Gate)", None, None),
        ("wamid.contacts", "contacts", "Ada L", None, None),
        ("wamid.reaction", "reaction", "👍", None, OUR_WAMID),
        ("wamid.reply", "text", "This one", None, OUR_WAMID),
        ("wamid.system", "system", None, None, None),
        ("wamid.unsupported", "unsupported", None, None, None),
    ],
)
def test_what_a_chatbot_reads_from_each_message_type(
    parsed_messages: dict[str, InboundMessage],
    wamid: str,
    kind: str,
    text: str | None,
    reply_id: str | None,
    context_message_id: str | None,
) -> None:
    parsed = parsed_messages[wamid]

    assert (parsed.type, parsed.text, parsed.reply_id, parsed.context_message_id) == (
        kind,
        text,
        reply_id,
        context_message_id,
    )
    assert parsed.timestamp == WHEN


def test_media_id_stays_in_raw(parsed_messages: dict[str, InboundMessage]) -> None:
    assert parsed_messages["wamid.image"].raw["image"]["id"] == "1003383421387256"


def test_messages_carry_the_phone_number_id_of_their_change(
    parsed_messages: dict[str, InboundMessage],
) -> None:
    assert parsed_messages["wamid.text"].identity_address == PHONE_NUMBER_ID
    assert parsed_messages["wamid.system"].identity_address == OTHER_PHONE_NUMBER_ID
    assert parsed_messages["wamid.system"].contact_name is None


def test_statuses_from_every_change() -> None:
    batch = parse_webhook(body_of(BIG_PAYLOAD))

    assert [(s.status, s.client_ref) for s in batch.statuses] == [
        ("sent", "conv-1:step-1"),
        ("delivered", None),
        ("read", None),
        ("failed", "conv-1:step-2"),
    ]
    assert batch.statuses[0] == StatusUpdate(
        channel="whatsapp",
        provider_message_id=OUR_WAMID,
        identity_address=PHONE_NUMBER_ID,
        status="sent",
        recipient=USER,
        timestamp=WHEN,
        client_ref="conv-1:step-1",
        errors=[],
    )
    failed = batch.statuses[3]
    assert failed.provider_message_id == "wamid.failed"
    assert [error["code"] for error in failed.errors] == [131047]


def test_other_fields_are_ignored_not_refused() -> None:
    batch = parse_webhook(body_of(BIG_PAYLOAD))

    assert len(batch.ignored) == 1
    assert batch.ignored[0]["field"] == "account_update"
    assert batch.ignored[0]["entry_id"] == "102290129340399"
    assert "reason" in batch.ignored[0]


def test_provider_errors_without_messages_are_reported_in_ignored() -> None:
    error = {"code": 131000, "title": "Something went wrong", "message": "Something went wrong"}
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"value": value(errors=[error]), "field": "messages"}]}],
    }

    batch = parse_webhook(body_of(payload))

    assert batch.messages == [] and batch.statuses == []
    assert batch.ignored[0]["error"] == error


def test_reaction_removal_has_no_text() -> None:
    removed = message("reaction", "wamid.unreact", reaction={"message_id": OUR_WAMID})
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {"id": "1", "changes": [{"value": value(messages=[removed]), "field": "messages"}]}
        ],
    }

    (parsed,) = parse_webhook(body_of(payload)).messages

    assert (parsed.text, parsed.context_message_id) == (None, OUR_WAMID)


def test_an_unknown_message_type_is_kept_as_given() -> None:
    odd = message("hologram", "wamid.odd", hologram={"id": "1"})
    payload = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"value": value(messages=[odd]), "field": "messages"}]}],
    }

    (parsed,) = parse_webhook(body_of(payload)).messages

    assert (parsed.type, parsed.text) == ("hologram", None)


# --- malformed bodies -------------------------------------------------------------------------


def with_messages(messages: list[dict[str, Any]]) -> bytes:
    change = {"value": value(messages=messages), "field": "messages"}
    return body_of(
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}
    )


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"object": "page", "entry": []}', "expected 'whatsapp_business_account'"),
        (b'{"entry": []}', "expected 'whatsapp_business_account'"),
        (b'{"object": "whatsapp_business_account"}', "entry is not a list"),
        (b'{"object": "whatsapp_business_account", "entry": {}}', "entry is not a list"),
        (b'{"object": "whatsapp_business_account", "entry": [{"id": "1"}]}', "changes"),
        (with_messages([{"from": USER, "timestamp": TS, "type": "text"}]), "'id'"),
        (with_messages([{"id": "wamid.x", "timestamp": TS, "type": "text"}]), "'from'"),
        (with_messages([{"id": "wamid.x", "from": USER, "type": "text"}]), "timestamp"),
        (with_messages(["not an object"]), "value.messages"),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes, match: str) -> None:
    with pytest.raises(MalformedPayload, match=match):
        parse_webhook(raw)


def test_missing_phone_number_id_is_refused() -> None:
    change = {"value": {"messaging_product": "whatsapp", "messages": []}, "field": "messages"}
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}

    with pytest.raises(MalformedPayload, match="phone_number_id"):
        parse_webhook(body_of(payload))


def test_a_status_without_id_is_refused() -> None:
    status = {"status": "sent", "timestamp": TS, "recipient_id": USER}
    change = {"value": value(statuses=[status]), "field": "messages"}
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [change]}]}

    with pytest.raises(MalformedPayload, match="'id'"):
        parse_webhook(body_of(payload))


def test_an_empty_entry_list_is_an_empty_batch() -> None:
    batch = parse_webhook(b'{"object": "whatsapp_business_account", "entry": []}')

    assert (batch.messages, batch.statuses, batch.ignored) == ([], [], [])


# --- builders speak the same format the parser reads ------------------------------------------


def test_built_text_message_matches_metas_documented_shape() -> None:
    payload = build_text_message_payload(
        phone_number_id=PHONE_NUMBER_ID,
        from_phone=USER,
        text="Hi",
        contact_name="Kerry Fisher",
        message_id="wamid.in-1",
        timestamp=int(TS),
    )

    assert payload == {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": PHONE_NUMBER_ID,
                            },
                            "contacts": [{"profile": {"name": "Kerry Fisher"}, "wa_id": USER}],
                            "messages": [
                                {
                                    "from": USER,
                                    "id": "wamid.in-1",
                                    "timestamp": TS,
                                    "type": "text",
                                    "text": {"body": "Hi"},
                                }
                            ],
                        },
                        "field": "messages",
                    }
                ],
            }
        ],
    }


def test_built_text_message_round_trips() -> None:
    payload = build_text_message_payload(
        phone_number_id=PHONE_NUMBER_ID, from_phone=USER, text="Hi", context_message_id=OUR_WAMID
    )

    (parsed,) = parse_webhook(body_of(payload)).messages

    assert (parsed.text, parsed.contact_address, parsed.contact_name) == ("Hi", USER, "Demo User")
    assert parsed.context_message_id == OUR_WAMID
    assert parsed.provider_message_id.startswith("wamid.")


def test_built_button_reply_round_trips() -> None:
    payload = build_button_reply_payload(
        phone_number_id=PHONE_NUMBER_ID,
        from_phone=USER,
        reply_id="yes",
        title="Yes",
        context_message_id=OUR_WAMID,
    )

    (parsed,) = parse_webhook(body_of(payload)).messages

    assert parsed.raw["interactive"] == {
        "type": "button_reply",
        "button_reply": {"id": "yes", "title": "Yes"},
    }
    assert (parsed.type, parsed.text, parsed.reply_id) == ("interactive", "Yes", "yes")
    assert parsed.context_message_id == OUR_WAMID


def test_built_sent_status_carries_billing_and_client_ref() -> None:
    payload = build_status_payload(
        phone_number_id=PHONE_NUMBER_ID,
        message_id=OUR_WAMID,
        status="sent",
        recipient=USER,
        client_ref="conv-9",
        timestamp=int(TS),
        conversation_id="CONVERSATION_ID",
    )

    entry = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert entry == STATUSES[0] | {"biz_opaque_callback_data": "conv-9"}
    (status,) = parse_webhook(body_of(payload)).statuses
    assert (status.status, status.client_ref, status.recipient) == ("sent", "conv-9", USER)


def test_built_failed_status_round_trips_its_errors() -> None:
    error = status_error(131047, "Re-engagement message", "More than 24 hours have passed.")
    payload = build_status_payload(
        phone_number_id=PHONE_NUMBER_ID,
        message_id=OUR_WAMID,
        status="failed",
        recipient=USER,
        errors=[error],
    )

    entry = payload["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert "conversation" not in entry and "pricing" not in entry
    (status,) = parse_webhook(body_of(payload)).statuses
    assert status.status == "failed"
    assert status.errors == [error]
    assert status.errors[0]["error_data"] == {"details": "More than 24 hours have passed."}
