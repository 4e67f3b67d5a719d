"""End to end: a WhatsApp contact who answers "STOP" mid-onboarding gets one confirmation from
the webhook (after its 200), its conversation ends and its number is suppressed — also when
the provider delivers the STOP twice. Signed webhook → inbox → the real worker's run."""

from __future__ import annotations

import asyncio

import pytest

from devkit.fakes.whatsapp_payloads import build_text_message_payload
from devkit.stack.demo import GREETING
from parley import suppression
from parley.campaign.model import DEFAULT_STOP_CONFIRMATION
from parley.db import Database
from tests.e2e.conftest import PHONE_NUMBER_ID, E2EStack

pytestmark = pytest.mark.e2e


async def test_stop_mid_onboarding_confirms_once_ends_and_suppresses(pg_stack: E2EStack) -> None:
    user = pg_stack.user("Erin")
    assert await user.say("Hi") == [GREETING]
    stop = build_text_message_payload(
        phone_number_id=PHONE_NUMBER_ID, from_phone=user.phone, text="Stop!", contact_name="Erin"
    )
    first = await user.post(stop)
    second = await user.post(stop)  # the provider delivers it again
    assert (first.json()["stored"], second.json()["duplicates"]) == (1, 1)
    detail = await pg_stack.wait_for_status(user, "completed")
    assert detail["last_error"].startswith("suppressed")
    assert await user.wait_for_bot(1, timeout=30) == [DEFAULT_STOP_CONFIRMATION]
    await asyncio.sleep(1.0)  # nothing more comes
    assert pg_stack.fake.texts_to(user.phone) == [GREETING, DEFAULT_STOP_CONFIRMATION]
    db = Database(pg_stack.db_url)
    try:
        async with db.read() as session:
            listed = await suppression.list_suppressions(session)
    finally:
        await db.dispose()
    assert [(s.address, s.reason) for s in listed if s.address == f"+{user.phone}"] == [
        (f"+{user.phone}", "unsubscribed")
    ]
