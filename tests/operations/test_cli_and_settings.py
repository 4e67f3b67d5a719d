"""The operator's surface: `parley` commands and the settings guard."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devkit.fakes.whatsapp_payloads import build_text_message_payload
from parley.campaign.registry import install_campaign
from parley.channels.whatsapp.wire import parse_webhook
from parley.cli import app
from parley.conversation import inbox
from parley.db import Database
from parley.errors import ConfigurationError
from parley.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_validate_accepts_the_onboarding_example() -> None:
    result = runner.invoke(
        app, ["campaign", "validate", str(ROOT / "examples/campaigns/onboarding.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "ok onboarding" in result.output


def test_validate_lists_every_problem_with_its_node_and_exits_2() -> None:
    result = runner.invoke(
        app, ["campaign", "validate", str(ROOT / "tests/campaign/fixtures/broken.yaml")]
    )
    assert result.exit_code == 2
    assert "ask_email" in result.output and "lonely" in result.output


def test_validate_a_missing_file_exits_2() -> None:
    result = runner.invoke(app, ["campaign", "validate", "/nonexistent/campaign.yaml"])
    assert result.exit_code == 2


async def test_conversations_list_and_show_as_json(cli_db: Database) -> None:
    async with cli_db.transaction() as session:
        version = await install_campaign(session, ROOT / "examples/campaigns/onboarding.yaml")
    payload = build_text_message_payload(
        phone_number_id="1", from_phone="34600999888", text="hi", message_id="wamid.cli-1"
    )
    await inbox.store_batch(cli_db, parse_webhook(json.dumps(payload).encode()), version.name)

    listed = await asyncio.to_thread(runner.invoke, app, ["conversations", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert {k: rows[0][k] for k in ("channel", "contact", "status")} == {
        "channel": "whatsapp",
        "contact": "34600999888",
        "status": "pending",
    }

    shown = await asyncio.to_thread(
        runner.invoke, app, ["conversations", "show", str(rows[0]["id"]), "--json"]
    )
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert detail["id"] == rows[0]["id"]
    assert detail["messages"][0]["direction"] == "in"
    assert detail["messages"][0]["text"] == "hi"
    assert detail["messages"][0]["provider_message_id"] == "wamid.cli-1"
    assert set(detail["messages"][0]) >= {
        "direction",
        "text",
        "provider_message_id",
        "status",
        "created_at",
    }


async def test_showing_an_unknown_conversation_fails_clearly(cli_db: Database) -> None:
    result = await asyncio.to_thread(runner.invoke, app, ["conversations", "show", "999999"])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_production_refuses_demo_secrets() -> None:
    with pytest.raises(ConfigurationError, match="PARLEY_WHATSAPP_APP_SECRET"):
        Settings(
            environment="production",
            whatsapp_access_token="real-token",
            whatsapp_verify_token="real-verify",
        )


def test_production_accepts_real_secrets() -> None:
    settings = Settings(
        environment="production",
        whatsapp_access_token="t",
        whatsapp_app_secret="s",
        whatsapp_verify_token="v",
        api_keys="k",
        database_url="postgresql+asyncpg://parley@db.internal/parley",
        whatsapp_api_url="https://graph.facebook.com/v21.0",
    )
    assert settings.environment == "production"


def test_db_upgrade_migrates_a_fresh_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    monkeypatch.setenv("PARLEY_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        first = runner.invoke(app, ["db", "upgrade"])
        again = runner.invoke(app, ["db", "upgrade"])  # idempotent
    finally:
        get_settings.cache_clear()
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    tables = (
        sqlite3.connect(tmp_path / "fresh.db")
        .execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        .fetchall()
    )
    assert {
        "conversations",
        "messages",
        "campaign_versions",
        "contacts",
        "identities",
        "webhook_events",
        "alembic_version",
    } <= {name for (name,) in tables}


def test_dev_outside_the_checkout_refuses_clearly_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default campaign is a relative path: from another directory `parley dev` used to
    start Prefect, then die with a traceback. Now it names the file, the directory, the fix."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARLEY_DATA_DIR", str(tmp_path / ".parley"))
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["dev"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "campaign file not found: examples/campaigns/onboarding.yaml" in text
    assert f"relative to {tmp_path}" in text and "PARLEY_DEFAULT_CAMPAIGN" in text
    assert not (tmp_path / ".parley" / "prefect").exists()  # nothing was started
