"""The issue's scenarios, each end to end: signed webhook → inbox → Prefect flow run on a real
worker → WhatsApp send to the loopback Graph API (and its status callbacks back)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from devkit.fakes.whatsapp_payloads import build_text_message_payload
from devkit.stack.demo import EMAIL_PROMPT, EMAIL_RETRY, GREETING, PLAN_PROMPT, THANKS
from parley.channels.whatsapp.wire import sign
from tests.e2e.conftest import API_KEY, APP_SECRET, PHONE_NUMBER_ID, E2EStack

pytestmark = pytest.mark.e2e


async def _onboard(user: Any, *, plan: tuple[str, str] = ("basic", "Basic")) -> None:
    assert await user.say("Hi") == [GREETING]
    assert await user.say(user.name) == [EMAIL_PROMPT.format(name=user.name)]
    assert await user.say(f"{user.name.lower()}@example.com") == [
        PLAN_PROMPT.format(name=user.name)
    ]
    assert await user.press(*plan) == [THANKS.format(name=user.name, plan=plan[1])]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_happy_path_completes_with_the_expected_transcript(
    stack_factory: Any, backend: str
) -> None:
    stack: E2EStack = stack_factory(backend) if backend == "sqlite" else stack_factory()
    user = stack.user("Alice")
    await _onboard(user)
    detail = await stack.wait_for_status(user, "completed")
    assert detail["variables"]["name"] == "Alice"
    assert detail["variables"]["email"] == "alice@example.com"
    assert detail["variables"]["plan"] == "Basic"
    assert [m["direction"] for m in detail["messages"]] == ["in", "out"] * 4
    assert all(m["provider_message_id"] for m in detail["messages"])
    assert {m["status"] for m in detail["messages"] if m["direction"] == "out"} <= {
        "sent",
        "delivered",
        "read",
    }
    profile = [r["json"] for r in stack.crm.requests]
    assert profile == [{"name": "Alice", "email": "alice@example.com", "plan": "Basic"}]


async def test_invalid_email_is_re_asked_then_valid_email_continues(pg_stack: E2EStack) -> None:
    user = pg_stack.user("Bob")
    assert await user.say("Hello") == [GREETING]
    assert await user.say("Bob") == [EMAIL_PROMPT.format(name="Bob")]
    assert await user.say("bob at example dot com") == [EMAIL_RETRY]
    assert await user.say("bob@example.com") == [PLAN_PROMPT.format(name="Bob")]
    assert await user.say("PRO") == [THANKS.format(name="Bob", plan="Pro")]
    detail = await pg_stack.wait_for_status(user, "completed")
    assert detail["variables"]["email"] == "bob@example.com"


async def test_two_messages_sent_back_to_back_are_both_processed_in_order(
    pg_stack: E2EStack,
) -> None:
    user = pg_stack.user("Carol")
    assert await user.say("Hi") == [GREETING]
    await user.say("Carol", expect=0)
    answers = await user.say("carol@example.com", expect=2)
    assert answers == [EMAIL_PROMPT.format(name="Carol"), PLAN_PROMPT.format(name="Carol")]
    assert await user.press("pro", "Pro") == [THANKS.format(name="Carol", plan="Pro")]
    detail = await pg_stack.wait_for_status(user, "completed")
    inbound = [m["text"] for m in detail["messages"] if m["direction"] == "in"]
    assert inbound == ["Hi", "Carol", "carol@example.com", "Pro"]


async def test_the_same_webhook_delivered_twice_is_processed_once(pg_stack: E2EStack) -> None:
    user = pg_stack.user("Dave")
    assert await user.say("Hi") == [GREETING]
    payload = build_text_message_payload(
        phone_number_id=PHONE_NUMBER_ID, from_phone=user.phone, text="Dave", contact_name="Dave"
    )
    first = await user.post(payload)
    second = await user.post(payload)
    assert first.json()["stored"] == 1
    assert second.json() == {"stored": 0, "duplicates": 1, "statuses": 0, "ignored": 0}
    assert await user.wait_for_bot(1, timeout=30) == [EMAIL_PROMPT.format(name="Dave")]
    await asyncio.sleep(1.0)
    assert pg_stack.fake.texts_to(user.phone) == [GREETING, EMAIL_PROMPT.format(name="Dave")]


async def _post_raw(url: str, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    async with httpx.AsyncClient() as client:
        return await client.post(url, content=body, headers=headers)


async def test_a_forged_signature_is_refused_and_nothing_is_stored(pg_stack: E2EStack) -> None:
    user = pg_stack.user("Mallory")
    body = json.dumps(
        build_text_message_payload(
            phone_number_id=PHONE_NUMBER_ID, from_phone=user.phone, text="hi"
        )
    ).encode()
    forged = await _post_raw(pg_stack.webhook_url, body, sign(body, "not-the-app-secret"))
    missing = await _post_raw(pg_stack.webhook_url, body, None)
    assert (forged.status_code, missing.status_code) == (401, 401)
    with pytest.raises(AssertionError, match="no conversation"):
        await pg_stack.conversation_of(user)
    assert pg_stack.fake.texts_to(user.phone) == []


NESTED = b'{"object": "whatsapp_business_account", "entry": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"object": "page", "entry": []}', NESTED],
    ids=["not json", "a list", "another product", "nested too deeply"],
)
async def test_a_malformed_body_is_refused_with_400(pg_stack: E2EStack, body: bytes) -> None:
    response = await _post_raw(pg_stack.webhook_url, body, sign(body, APP_SECRET))
    assert response.status_code == 400
    assert response.json()["detail"]


async def test_subscription_verification_echoes_the_challenge_only_with_the_right_token(
    pg_stack: E2EStack,
) -> None:
    async with httpx.AsyncClient() as client:
        ok = await client.get(
            pg_stack.webhook_url,
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": "test-verify-token",
                "hub.challenge": "1158201444",
            },
        )
        bad = await client.get(
            pg_stack.webhook_url,
            params={"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "x"},
        )
    assert (ok.status_code, ok.text) == (200, "1158201444")
    assert ok.headers["content-type"].startswith("text/plain")
    assert bad.status_code == 403


async def test_messages_racing_the_suspend_are_never_lost(stack_factory: Any) -> None:
    """No hot window: every reply races the run marking itself suspended and exiting."""
    stack: E2EStack = stack_factory("postgresql", hot_wait=0)
    users = [stack.user(name) for name in ("Erin", "Frank", "Grace")]
    await asyncio.gather(*(_onboard(user) for user in users))
    for user in users:
        await stack.wait_for_status(user, "completed")
        assert len(stack.fake.texts_to(user.phone)) == 4


async def test_worker_killed_between_sending_and_recording_sends_each_reply_once(
    stack_factory: Any,
) -> None:
    stack: E2EStack = stack_factory("postgresql", hot_wait=30)
    user = stack.user("Heidi")
    assert await user.say("Hi") == [GREETING]
    # The Graph API accepts the next message (and calls back its status) but the worker never
    # reads the answer: it is SIGKILLed while the response is held.
    stack.fake.hold_next(30)
    before = len(stack.fake.received)
    await user.say("Heidi", expect=0)
    assert await asyncio.to_thread(stack.fake.wait_for_messages, before + 1, 30)
    stack.kill_worker()
    stack.start_worker()
    assert await user.wait_for_bot(1, timeout=60) == [EMAIL_PROMPT.format(name="Heidi")]
    assert await user.say("heidi@example.com") == [PLAN_PROMPT.format(name="Heidi")]
    assert await user.press("pro", "Pro") == [THANKS.format(name="Heidi", plan="Pro")]
    await stack.wait_for_status(user, "completed")
    texts = stack.fake.texts_to(user.phone)
    assert texts == [
        GREETING,
        EMAIL_PROMPT.format(name="Heidi"),
        PLAN_PROMPT.format(name="Heidi"),
        THANKS.format(name="Heidi", plan="Pro"),
    ]


async def test_the_rest_api_lists_conversations_and_404s_unknown_ones(pg_stack: E2EStack) -> None:
    user = pg_stack.user("Olga")
    assert await user.say("Hi") == [GREETING]
    base = pg_stack.webhook_url.removesuffix("/webhooks/whatsapp")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(headers=headers) as client:
        listed = (await client.get(f"{base}/api/conversations")).json()
        mine = next(c for c in listed if c["contact"] == user.phone)
        detail = (await client.get(f"{base}/api/conversations/{mine['id']}")).json()
        missing = await client.get(f"{base}/api/conversations/99999999")
    assert detail["messages"][0]["text"] == "Hi"
    assert detail["flow_run_id"]
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]


async def test_a_worker_stopped_gracefully_suspends_its_hot_conversations(
    stack_factory: Any,
) -> None:
    stack: E2EStack = stack_factory("postgresql", hot_wait=120)
    user = stack.user("Pat")
    assert await user.say("Hi") == [GREETING]
    await stack.wait_for_status(user, "hot")
    assert stack.stack.terminate("worker", grace=30) == 0
    assert (await stack.conversation_of(user))["status"] == "suspended"
    stack.start_worker()
    assert await user.say("Pat") == [EMAIL_PROMPT.format(name="Pat")]
