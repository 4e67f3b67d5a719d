"""Leads in bulk (issue 18), on SQLite and PostgreSQL: every row is checked before anything is
created, each row gets its outcome in the report, conversations are created in batches and
left pending for the dispatcher's paced start, importing the same file twice starts nothing
new, and an import interrupted after a batch is finished by importing the same rows again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from parley import suppression
from parley.campaign.registry import install_campaign
from parley.conversation import lead_import, lifecycle
from parley.conversation.lead_rows import parse_text
from parley.db import Database
from parley.db.models import Conversation, Identity, LeadImport
from parley.errors import NotFound
from parley.vocabulary import Status

SEQUENCE = """
name: li-import
channel: linkedin
inputs: [first_name]
start: connect
nodes:
  - {id: connect, type: send, action: linkedin_connection, text: "Hi {first_name}"}
  - {id: done, type: end}
edges:
  - {from: connect, to: done}
"""


class Interrupted(Exception):
    """The importing process dies after a committed batch."""


@pytest.fixture
async def campaign(db: Database, tmp_path: Path) -> str:
    path = tmp_path / "sequence.yaml"
    path.write_text(SEQUENCE)
    async with db.transaction() as session:
        return (await install_campaign(session, path)).name


@pytest.fixture
async def identity(db: Database) -> int:
    async with db.transaction() as session:
        seat = Identity(channel="linkedin", address="seat-1", timezone="UTC")
        session.add(seat)
        await session.flush()
        return seat.id


def _leads(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "linkedin": f"https://linkedin.com/in/lead-{i}",
            "email": f"lead{i}@example.com",
            "name": f"Lead {i}",
            "var.first_name": f"Lead{i}",
            "company": "Acme",
        }
        for i in range(start, start + n)
    ]


async def _conversations(db: Database) -> list[Conversation]:
    async with db.read() as session:
        return list((await session.execute(select(Conversation))).scalars())


def _outcomes(view: dict[str, Any]) -> list[str]:
    return [row["outcome"] for row in view["rows"]]


async def test_every_row_is_checked_and_reported_and_only_valid_leads_get_a_conversation(
    db: Database, campaign: str, identity: int
) -> None:
    csv_text = (
        "linkedin,email,name,var.first_name,plan\n"
        "https://linkedin.com/in/ana,ana@example.com,Ana,Ana,pro\n"
        "https://linkedin.com/in/bob,bob@@example,Bob,Bob,free\n"
        "https://linkedin.com/in/cy,,Cy,,free\n"
        ",dee@example.com,Dee,Dee,free\n"
        "https://linkedin.com/in/ana,other@example.com,Ana again,Ana,pro\n"
    )

    prepared, counts = await lead_import.import_leads(
        db, campaign, identity, parse_text(csv_text, "csv"), source="leads.csv"
    )
    view = await lead_import.progress(db, prepared.import_id)

    outcomes = _outcomes(view)
    assert outcomes[0] == "started"
    assert outcomes[1].startswith("invalid: malformed email 'bob@@example'")
    assert outcomes[2] == "invalid: missing campaign input(s): first_name"
    assert outcomes[3] == "invalid: no linkedin for a linkedin lead"
    assert outcomes[4] == "invalid: duplicate of row 1"
    assert counts == {"started": 1, "invalid": 4}
    [conversation] = await _conversations(db)
    assert conversation.status is Status.PENDING
    assert conversation.flow_run_id is None  # the dispatcher starts it, paced
    assert conversation.import_id == prepared.import_id
    assert conversation.variables == {"first_name": "Ana"}
    ana = await lifecycle_contact_fields(db, conversation.contact_id)
    assert ana == {
        "email": "ana@example.com",
        "linkedin": "https://linkedin.com/in/ana",
        "plan": "pro",
    }
    assert view["status"] == "done" and view["runs_started"] == 0


async def lifecycle_contact_fields(db: Database, contact_id: int) -> dict[str, Any]:
    from parley.db import queries

    async with db.read() as session:
        return dict((await queries.contacts.get_contact(session, contact_id)).fields)


async def test_a_jsonl_row_gives_variables_and_fields_as_objects(
    db: Database, campaign: str, identity: int
) -> None:
    jsonl = (
        '{"linkedin": "https://linkedin.com/in/eve", "variables": {"first_name": "Eve"}, '
        '"fields": {"plan": "pro"}}\n'
        "not json\n"
    )

    prepared, counts = await lead_import.import_leads(
        db, campaign, identity, parse_text(jsonl, "jsonl"), source="leads.jsonl"
    )

    view = await lead_import.progress(db, prepared.import_id)
    assert _outcomes(view)[1].startswith("invalid: line 2 is not JSON")
    assert counts == {"started": 1, "invalid": 1}
    [conversation] = await _conversations(db)
    assert conversation.variables == {"first_name": "Eve"}


async def test_conversations_are_created_in_batches_one_transaction_each(
    db: Database, campaign: str, identity: int
) -> None:
    batches: list[int] = []

    _prepared, counts = await lead_import.import_leads(
        db, campaign, identity, _leads(25), source="big.csv", batch_size=10, on_batch=batches.append
    )

    assert batches == [10, 10, 5]
    assert counts == {"started": 25}
    assert len(await _conversations(db)) == 25


async def test_importing_the_same_file_twice_starts_nothing_new(
    db: Database, campaign: str, identity: int
) -> None:
    await lead_import.import_leads(db, campaign, identity, _leads(5), source="a.csv")

    again, counts = await lead_import.import_leads(
        db, campaign, identity, _leads(5), source="a.csv"
    )

    assert counts == {"skipped": 5}
    view = await lead_import.progress(db, again.import_id)
    assert all(
        o.startswith("skipped: already imported into li-import (import ") for o in _outcomes(view)
    )
    assert len(await _conversations(db)) == 5


async def test_a_lead_already_in_a_conversation_with_the_identity_is_skipped(
    db: Database, campaign: str, identity: int
) -> None:
    started = await lifecycle.start(
        db,
        campaign,
        identity,
        channel="linkedin",
        address="https://linkedin.com/in/lead-1",
        variables={"first_name": "One"},
    )

    prepared, counts = await lead_import.import_leads(
        db, campaign, identity, _leads(3), source="three.csv"
    )

    view = await lead_import.progress(db, prepared.import_id)
    assert view["rows"][1]["outcome"] == (
        "skipped: already in an active conversation with this identity"
    )
    assert view["rows"][1]["conversation_id"] == started.conversation_id
    assert counts == {"started": 2, "skipped": 1}


async def test_an_import_interrupted_after_a_batch_is_finished_by_importing_it_again(
    db: Database, campaign: str, identity: int
) -> None:
    def die_after_the_first_batch(settled: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await lead_import.import_leads(
            db,
            campaign,
            identity,
            _leads(12),
            source="crash.csv",
            batch_size=5,
            on_batch=die_after_the_first_batch,
        )
    assert len(await _conversations(db)) == 5  # the first batch was committed

    again, counts = await lead_import.import_leads(
        db, campaign, identity, _leads(12), source="crash.csv", batch_size=5
    )

    assert again.resumed
    assert counts == {"started": 12}
    conversations = await _conversations(db)
    assert len(conversations) == 12
    assert len({c.contact_id for c in conversations}) == 12  # nobody twice
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(LeadImport)) == 1


async def test_an_unknown_campaign_or_identity_is_refused_and_stores_nothing(
    db: Database, campaign: str, identity: int
) -> None:
    with pytest.raises(NotFound):
        await lead_import.prepare(db, "no-such-campaign", identity, _leads(1), source="x")
    with pytest.raises(NotFound):
        await lead_import.prepare(db, campaign, identity + 100, _leads(1), source="x")

    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(LeadImport)) == 0


async def test_a_suppressed_lead_is_skipped_by_any_of_its_addresses(
    db: Database, campaign: str, identity: int
) -> None:
    async with db.transaction() as session:
        await suppression.add(session, "LEAD1@example.com", "unsubscribed")  # everyone
        await suppression.add(
            session, "https://www.linkedin.com/in/lead-2/", "manual", identity_id=identity
        )

    prepared, counts = await lead_import.import_leads(
        db, campaign, identity, _leads(3), source="three.csv"
    )

    view = await lead_import.progress(db, prepared.import_id)
    assert _outcomes(view) == [
        "started",
        "skipped: suppressed (unsubscribed)",
        "skipped: suppressed (manual)",
    ]
    assert counts == {"started": 1, "skipped": 2}
    assert len(await _conversations(db)) == 1
