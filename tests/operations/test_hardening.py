"""Settings and surfaces that must not leak or accept what production cannot survive: empty
secrets, demo secrets, embedded databases, loopback providers, secrets in logs, contacts'
numbers in names many people read, and bodies built to crash a parser."""

from __future__ import annotations

import json

import pytest

from parley.channels.whatsapp.wire import parse_webhook
from parley.conversation.operator_views import mask_address
from parley.errors import ConfigurationError, MalformedPayload
from parley.settings import Settings

REAL = {
    "environment": "production",
    "whatsapp_access_token": "t",
    "whatsapp_app_secret": "s",
    "whatsapp_verify_token": "v",
    "api_keys": "k",
    "database_url": "postgresql+asyncpg://parley:hunter2@db.internal/parley",
    "whatsapp_api_url": "https://graph.facebook.com/v21.0",
}


@pytest.mark.parametrize("environment", ["development", "production"])
@pytest.mark.parametrize(
    "secret", ["whatsapp_app_secret", "whatsapp_verify_token", "whatsapp_access_token", "api_keys"]
)
def test_an_empty_secret_is_refused_in_every_environment(environment: str, secret: str) -> None:
    """An empty app secret would make any forged webhook 'signed'."""
    with pytest.raises(ConfigurationError, match=f"PARLEY_{secret.upper()}"):
        Settings(**{**REAL, "environment": environment, secret: "  "})


def test_production_refuses_the_embedded_sqlite_database() -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        Settings(**{**REAL, "database_url": ""})
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        Settings(**{**REAL, "database_url": "sqlite+aiosqlite:////srv/parley.db"})


def test_production_refuses_a_loopback_provider_url() -> None:
    with pytest.raises(ConfigurationError, match="loopback"):
        Settings(**{**REAL, "whatsapp_api_url": "http://127.0.0.1:8089/v21.0"})


def test_production_refuses_a_demo_key_even_among_rotated_ones() -> None:
    with pytest.raises(ConfigurationError, match="PARLEY_API_KEYS"):
        Settings(**{**REAL, "api_keys": "k, parley-demo-api-key"})


def test_secrets_are_never_printed() -> None:
    settings = Settings(**REAL)
    shown = repr(settings) + str(settings) + settings.printable_database_url
    for secret in ("hunter2",):
        assert secret not in shown
    assert settings.printable_database_url == "postgresql+asyncpg://parley:***@db.internal/parley"
    assert "SecretStr('**********')" in repr(settings)


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("+34600111222", "+34•••••••22"),
        ("34600111222", "+34•••••••22"),
        ("5551234", "+5•••••4"),  # a short number is masked too
        ("1234", "+1••4"),
        ("123", "+•••"),
        ("ana.garcia@example.com", "a•••@example.com"),
    ],
)
def test_contact_addresses_are_masked_whatever_their_length(address: str, masked: str) -> None:
    assert mask_address(address) == masked
    digits = [c for c in mask_address(address) if c.isdigit()]
    assert len(digits) <= len([c for c in address if c.isdigit()]) // 2


def test_a_deeply_nested_body_is_malformed_not_a_crash() -> None:
    body = b'{"object": "whatsapp_business_account", "entry": ' + b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(MalformedPayload, match="nested too deeply"):
        parse_webhook(body)
    shallow = json.dumps({"object": "whatsapp_business_account", "entry": []}).encode()
    assert parse_webhook(shallow).messages == []
