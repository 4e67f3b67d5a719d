"""Shared fixtures for storage behaviour: a migrated database (SQLite and PostgreSQL), the
onboarding campaign installed in it, the loopback Graph API and CRM, and a step runtime."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.fakes.recording_endpoint import RecordingEndpoint
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_text_message_payload
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.channels.whatsapp.wire import parse_webhook
from parley.conversation import executor, inbox
from parley.conversation import operator_views as views
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
PHONE_ID = "100000000000001"
USER = "34600111222"


@pytest.fixture
def crm() -> Iterator[RecordingEndpoint]:
    endpoint = RecordingEndpoint().start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def fake() -> Iterator[FakeWhatsAppAPI]:
    api = FakeWhatsAppAPI(access_token="t", phone_number_id=PHONE_ID)
    api.start()
    yield api
    api.stop()


@pytest.fixture
async def campaign_name(db: Database) -> str:
    async with db.transaction() as session:
        return (await install_campaign(session, ROOT / "examples/campaigns/onboarding.yaml")).name


@pytest.fixture
async def runtime(
    db: Database, fake: FakeWhatsAppAPI, crm: RecordingEndpoint
) -> AsyncIterator[Runtime]:
    config = WhatsAppConfig(fake.api_url, "t", PHONE_ID, "app-secret", "verify", timeout_seconds=2)
    channel = WhatsAppChannel(config)
    yield Runtime(
        db=db,
        channels={"whatsapp": channel},
        post_json=post_json,
        campaigns=CampaignCache(),
        lease_seconds=5,
        reconcile_seconds=1,
        poll_seconds=0.01,
        environ={"CRM_URL": crm.url},  # the onboarding campaign's {env.CRM_URL}
    )
    await channel.aclose()


def make_batch(text: str, message_id: str | None = None) -> Any:
    payload = build_text_message_payload(
        phone_number_id=PHONE_ID,
        from_phone=USER,
        text=text,
        contact_name="Ana",
        message_id=message_id,
    )
    return parse_webhook(json.dumps(payload).encode())


async def start_conversation(db: Database, rt: Runtime, campaign_name: str) -> int:
    await inbox.store_batch(db, make_batch("hi"), campaign_name)
    conversation_id = int((await views.list_conversations(db))[0]["id"])
    await executor.begin_run(rt, conversation_id, None)
    return conversation_id
