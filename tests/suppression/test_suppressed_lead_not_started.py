"""A suppressed lead is never started: ``start`` (CLI, REST, lead import) refuses with the
entry that covers it — by the address it is started on or any of its email, phone, LinkedIn
fields — and nothing is written. Taken off the list, the lead starts."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from parley import suppression
from parley.cli import app
from parley.conversation import lifecycle
from parley.db import Database, queries
from parley.db.models import Contact, Identity
from parley.errors import Suppressed
from tests.dispatching.test_outreach import campaign
from tests.operator_api import operator_api
from webhook.routes import api

__all__ = ["campaign"]  # fixture, used by name

runner = CliRunner()
PROFILE = "https://www.linkedin.com/in/ana-lopez"


async def _seat(db: Database) -> int:
    async with db.transaction() as session:
        seat = Identity(channel="linkedin", address="seat-1")
        session.add(seat)
        await session.flush()
        return seat.id


async def _start(db: Database, campaign: str, identity_id: int, **fields: str) -> int:
    change = await lifecycle.start(
        db,
        campaign,
        identity_id,
        channel="linkedin",
        address=PROFILE,
        fields=fields,
        variables={"first_name": "Ana"},
    )
    return change.conversation_id


@pytest.mark.parametrize(
    "suppressed", ["HTTPS://linkedin.com/in/Ana-Lopez/", "ana@example.com", "+34 600 111 222"]
)
async def test_a_lead_suppressed_by_any_of_its_addresses_is_not_started(
    db: Database, campaign: str, suppressed: str
) -> None:
    seat = await _seat(db)
    async with db.transaction() as session:
        await suppression.add(session, suppressed, "unsubscribed")
    with pytest.raises(Suppressed, match="do-not-contact list installation-wide"):
        await _start(db, campaign, seat, email="Ana@Example.com", phone="0034600111222")
    async with db.read() as session:
        assert await queries.conversations.list_conversations(session, limit=10) == []
        contacts = (await session.execute(select(Contact))).scalars().all()
        assert contacts == []  # the refused start wrote nothing


async def test_removed_from_the_list_the_lead_starts(db: Database, campaign: str) -> None:
    seat = await _seat(db)
    async with db.transaction() as session:
        await suppression.add(session, "ana@example.com", "manual", identity_id=seat)
    with pytest.raises(Suppressed, match=f"for identity {seat}"):
        await _start(db, campaign, seat, email="ana@example.com")
    async with db.transaction() as session:
        await suppression.remove(session, "ana@example.com", identity_id=seat)
    assert await _start(db, campaign, seat, email="ana@example.com") > 0


async def test_the_rest_api_refuses_a_suppressed_lead_with_409(db: Database, campaign: str) -> None:
    seat = await _seat(db)
    async with db.transaction() as session:
        await suppression.add(session, PROFILE, "complained")
    async with operator_api(db, api.router) as client:
        response = await client.post(
            "/api/conversations",
            json={
                "campaign": campaign,
                "identity_id": seat,
                "address": PROFILE,
                "variables": {"first_name": "Ana"},
            },
        )
    assert response.status_code == 409
    assert "do-not-contact list" in response.json()["detail"]
    assert "complained" in response.json()["detail"]


async def test_the_cli_refuses_a_suppressed_lead_with_exit_1(
    cli_db: Database, campaign: str
) -> None:
    seat = await _seat(cli_db)
    async with cli_db.transaction() as session:
        await suppression.add(session, "ana@example.com", "bounced")
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        [
            "conversations", "start", "--campaign", campaign, "--identity", str(seat),
            "--to", PROFILE, "--field", "email=ana@example.com", "--var", "first_name=Ana",
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "ana@example.com is on the do-not-contact list" in result.output
