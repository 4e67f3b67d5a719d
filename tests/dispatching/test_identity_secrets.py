"""Secrets stay secret: an operator who sees a stored API key, password or token only as ``•••``
cannot point it at a server of their own by changing where it is sent (a gateway URL, an SMTP
host, port or TLS setting) — the change needs the secret again, or removes it. On SQLite and
PostgreSQL, over the REST API and the CLI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from parley.cli import app
from parley.db import Database
from parley.db.models import Identity
from parley.errors import InvalidInput
from parley.outreach import identities
from tests.operator_api import operator_api
from webhook.routes import identities as identity_routes

API_KEY = "operator-key-for-secret-tests-0123"
MASK = "•••"
runner = CliRunner()

SEAT = {"account_id": "seat-1", "gateway_url": "https://gw.example", "api_key": "k-stored"}
MAILBOX = {
    "smtp_host": "smtp.example.com",
    "smtp_port": 587,
    "starttls": True,
    "username": "ana",
    "password": "pw-stored",
}
NUMBER = {"api_url": "https://graph.example/v21.0", "access_token": "EAAG-stored"}

# (channel, address, stored settings, a change of where the secret goes, the secret's key)
REDIRECTS = [
    pytest.param("linkedin", "seat-1", SEAT, {"gateway_url": "https://evil.example"}, "api_key",
                 id="linkedin-gateway_url"),
    pytest.param("email", "ana@example.com", MAILBOX, {"smtp_host": "smtp.evil.example"},
                 "password", id="email-smtp_host"),
    pytest.param("email", "ana@example.com", MAILBOX, {"smtp_port": 2525}, "password",
                 id="email-smtp_port"),
    pytest.param("email", "ana@example.com", MAILBOX, {"starttls": False}, "password",
                 id="email-starttls-off"),
    pytest.param("whatsapp", "34600000001", NUMBER, {"api_url": "https://evil.example"},
                 "access_token", id="whatsapp-api_url"),
]  # fmt: skip


async def _stored(db: Database, identity_id: int) -> dict[str, Any]:
    async with db.read() as session:
        identity = await session.get(Identity, identity_id)
        assert identity is not None
        return dict(identity.settings)


async def _patch(db: Database, identity_id: int, settings: dict[str, Any]) -> tuple[int, Any]:
    async with operator_api(db, identity_routes.router, api_key=API_KEY) as api:
        answer = await api.patch(f"/api/identities/{identity_id}", json={"settings": settings})
    return answer.status_code, answer.json()


async def _update_cli(identity_id: int, settings: dict[str, Any]) -> tuple[int, str]:
    arguments = ["identity", "update", str(identity_id), "--settings-json", json.dumps(settings)]
    result = await asyncio.to_thread(runner.invoke, app, [*arguments, "--json"])
    return result.exit_code, result.output


@pytest.mark.parametrize(("channel", "address", "stored", "redirect", "secret"), REDIRECTS)
async def test_rest_changing_where_a_secret_goes_without_it_is_refused(
    db: Database,
    channel: str,
    address: str,
    stored: dict[str, Any],
    redirect: dict[str, Any],
    secret: str,
) -> None:
    added = await identities.add_identity(db, channel, address, settings=stored)
    for attempt in (redirect, {**redirect, secret: MASK}):  # left out, or the masked value
        status, body = await _patch(db, added["id"], attempt)
        assert status == 422, body
        assert secret in body["detail"], body
        assert await _stored(db, added["id"]) == stored  # nothing changed

    status, body = await _patch(db, added["id"], {**redirect, secret: "given-again"})
    assert status == 200, body
    assert body["settings"][secret] == MASK
    assert await _stored(db, added["id"]) == {**stored, **redirect, secret: "given-again"}


@pytest.mark.parametrize(("channel", "address", "stored", "redirect", "secret"), REDIRECTS)
async def test_cli_changing_where_a_secret_goes_without_it_is_refused(
    cli_db: Database,
    channel: str,
    address: str,
    stored: dict[str, Any],
    redirect: dict[str, Any],
    secret: str,
) -> None:
    added = await identities.add_identity(cli_db, channel, address, settings=stored)
    code, output = await _update_cli(added["id"], redirect)
    assert code == 1, output
    assert secret in output and "again" in output, output
    assert await _stored(cli_db, added["id"]) == stored

    code, output = await _update_cli(added["id"], {**redirect, secret: "given-again"})
    assert code == 0, output
    assert json.loads(output)["settings"][secret] == MASK
    assert await _stored(cli_db, added["id"]) == {**stored, **redirect, secret: "given-again"}


async def test_rest_a_redirect_may_remove_the_secret_instead(db: Database) -> None:
    added = await identities.add_identity(db, "email", "bo@example.com", settings=MAILBOX)
    status, body = await _patch(db, added["id"], {"smtp_host": "relay.example", "password": None})
    assert status == 200, body
    stored = await _stored(db, added["id"])
    assert stored["smtp_host"] == "relay.example" and "password" not in stored


async def test_what_does_not_move_a_secret_needs_no_secret(db: Database) -> None:
    """A username, a sender name, a timeout: the stored password stays, untyped."""
    added = await identities.add_identity(db, "email", "cy@example.com", settings=MAILBOX)
    updated = await identities.update_identity(
        db, added["id"], settings={"username": "cy", "from_name": "Cy", "timeout": 20}
    )
    assert updated["settings"]["password"] == MASK
    assert (await _stored(db, added["id"]))["password"] == "pw-stored"
    # Nothing secret is stored: a destination may change freely.
    plain = await identities.add_identity(
        db, "email", "dee@example.com", settings={"smtp_host": "a"}
    )
    changed = await identities.update_identity(db, plain["id"], settings={"smtp_host": "b"})
    assert changed["settings"] == {"smtp_host": "b"}


async def test_a_seats_mailbox_given_anew_keeps_no_password_it_did_not_give(db: Database) -> None:
    """A LinkedIn seat's email fallback is one nested mapping, replaced as a whole: a new
    mailbox host without its password leaves no stored password to be sent there."""
    nested = {"address": "me@example.com", **MAILBOX}
    added = await identities.add_identity(
        db, "linkedin", "seat-2", settings={**SEAT, "email": nested}
    )
    moved = {"address": "me@example.com", "smtp_host": "smtp.evil.example"}
    await identities.update_identity(db, added["id"], settings={"email": moved})
    stored = await _stored(db, added["id"])
    assert stored["email"] == moved and stored["api_key"] == "k-stored"

    with pytest.raises(InvalidInput, match=r"settings\.email\.password"):
        await identities.update_identity(
            db, added["id"], settings={"email": {**moved, "password": MASK}}
        )


def test_what_counts_as_where_a_secret_goes() -> None:
    from parley.outreach.identities import _DESTINATION

    for key in ("gateway_url", "api_url", "smtp_host", "smtp_port", "use_tls", "starttls"):
        assert _DESTINATION.search(key), key
    for key in ("support_email", "from_name", "account_id", "username", "timeout", "language"):
        assert not _DESTINATION.search(key), key
