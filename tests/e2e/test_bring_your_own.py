"""Issue 18's "done when", as an operator does it with the README's commands: publish their own
campaign (a draft), activate it, import a CSV of leads for one LinkedIn seat, watch the sequence
go within the seat's hours and caps (`identity show`, the funnel), suppress one lead mid-way
(nothing more goes to them), publish a version 2 and migrate the waiting conversations to it —
on a real stack (worker, webhook, dispatcher, Prefect server, PostgreSQL) against the loopback
LinkedIn gateway, on a driven clock.

The CLI is run as the operator runs it (``python -m parley`` in a subprocess with the stack's
environment). CI imports 40 leads; ``PARLEY_E2E_LEADS=500`` runs the issue's full size (runs
are started at ``PARLEY_RUN_STARTS_PER_SECOND``, so that takes several minutes).
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley.clock import DrivenClock
from parley.db import Database
from parley.db.models import Action, CampaignVersion, Conversation
from tests.e2e.conftest import E2EStack, eventually

pytestmark = pytest.mark.e2e

LEADS = int(os.environ.get("PARLEY_E2E_LEADS", "40"))
SEAT = "seat-own"
SECRET = "test-linkedin-webhook-secret"
CAMPAIGN = "seat-sequence"
DAILY_CONNECTIONS = 10
FRIDAY_15 = datetime(2026, 12, 11, 15, 0, tzinfo=UTC)
SATURDAY_12 = datetime(2026, 12, 12, 12, 0, tzinfo=UTC)
MONDAY_0901 = datetime(2026, 12, 14, 9, 1, tzinfo=UTC)
MONDAY_09 = MONDAY_0901.replace(minute=0)
POLICY = {
    "working_hours": {"weekly": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}},
    "limits": {
        "actions": {
            "linkedin_profile_visit": {"spacing": "0s"},
            "linkedin_connection": {"daily": DAILY_CONNECTIONS, "spacing": "1s"},
            "linkedin_message": {"spacing": "0s"},
        }
    },
}

SEQUENCE = """\
name: seat-sequence
version: 1
description: A visit, an invitation, and a message once they accept (or three days on).
channel: linkedin
inputs: [first_name]
on_reply: stopped
start: visit
nodes:
  - {id: visit, type: send, action: linkedin_profile_visit}
  - {id: connect, type: send, action: linkedin_connection, text: "Hi {first_name}, connect?"}
  - {id: wait_accept, type: branch}
  - {id: message, type: send, action: linkedin_message, text: "MESSAGE_TEXT"}
  - {id: wait_message, type: wait_for_reply, timeout: 4d}
  - {id: stopped, type: end}
  - {id: done, type: end}
edges:
  - {from: visit, to: connect}
  - {from: connect, to: wait_accept}
  - {from: wait_accept, to: message, when: connection_accepted}
  - {from: wait_accept, to: message, when: {time_passed: 3d}}
  - {from: message, to: done, when: error}
  - {from: message, to: wait_message}
  - {from: wait_message, to: stopped, when: replied}
  - {from: wait_message, to: done, when: no_reply}
"""
V1_TEXT = "Thanks for connecting, {first_name}!"
V2_TEXT = "Thanks for connecting, {first_name}. Version two says hello."


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> DrivenClock:
    return DrivenClock(tmp_path_factory.mktemp("own-clock") / "offset")


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeLinkedInGateway]:
    fake = FakeLinkedInGateway(accounts=(SEAT,), webhook_secret=SECRET)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def own_stack(stack_factory: Any, clock: DrivenClock, gateway: FakeLinkedInGateway) -> E2EStack:
    stack: E2EStack = stack_factory(
        "postgresql",
        hot_wait=1.0,
        extra_env={
            "PARLEY_CLOCK_FILE": str(clock.path),
            "PARLEY_LINKEDIN_WEBHOOK_SECRET": SECRET,
        },
    )
    gateway.webhook_url = stack.webhook_url.replace("/webhooks/whatsapp", "/webhooks/linkedin")
    return stack


def _parley(stack: E2EStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        env={**os.environ, **stack.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


async def _rows(stack: E2EStack, model: Any, *where: Any) -> list[Any]:
    db = Database(stack.db_url)
    try:
        async with db.read() as session:
            found = await session.execute(select(model).where(*where).order_by(model.id))
            return list(found.scalars())
    finally:
        await db.dispose()


def _kinds(gateway: FakeLinkedInGateway, kind: str) -> list[str]:
    return [a.to for a in gateway.performed if a.account_id == SEAT and a.kind == kind]


def _profile(n: int) -> str:
    return f"https://www.linkedin.com/in/own-lead-{n}"


def _write_leads(path: Path) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["linkedin", "email", "name", "first_name", "company"])
        for n in range(1, LEADS + 1):
            writer.writerow([_profile(n), f"lead{n}@example.com", f"Lead {n}", f"Lead{n}", "Acme"])


async def test_own_campaign_imported_leads_suppressed_lead_and_version_two(
    own_stack: E2EStack, clock: DrivenClock, gateway: FakeLinkedInGateway, tmp_path: Path
) -> None:
    stack = own_stack
    clock.set_offset(FRIDAY_15 - datetime.now(UTC))
    added = await stack.api(
        "POST",
        "/api/identities",
        {
            "channel": "linkedin",
            "address": SEAT,
            "policy": POLICY,
            "settings": dict(gateway.sender(SEAT).settings),
        },
    )
    assert added.status_code == 201, added.text
    seat = added.json()["id"]

    # Publish: a new campaign is a draft; leads of a draft would wait at its gate.
    v1 = tmp_path / "seat-sequence.yaml"
    v1.write_text(SEQUENCE.replace("MESSAGE_TEXT", V1_TEXT))
    published = json.loads(_ok(_parley(stack, "campaign", "publish", str(v1), "--json")))
    assert (published["name"], published["version"], published["created"]) == (CAMPAIGN, 1, True)
    listed = _ok(_parley(stack, "campaign", "list"))
    assert CAMPAIGN in listed and "draft" in listed
    _ok(_parley(stack, "campaign", "activate", CAMPAIGN))
    assert "active" in _ok(_parley(stack, "campaign", "list"))

    # Import the CSV; the per-row report says every lead started.
    leads, report = tmp_path / "leads.csv", tmp_path / "report.csv"
    _write_leads(leads)
    imported = _parley(
        stack,
        "leads",
        "import",
        str(leads),
        "--campaign",
        CAMPAIGN,
        "--identity",
        str(seat),
        "--report",
        str(report),
    )
    _ok(imported)
    with report.open() as rows:
        outcomes = [row["outcome"] for row in csv.DictReader(rows)]
    assert outcomes == ["started"] * LEADS
    again = _parley(
        stack, "leads", "import", str(leads), "--campaign", CAMPAIGN, "--identity", str(seat)
    )
    _ok(again)  # the same file again starts nothing new
    conversations = await _rows(stack, Conversation, Conversation.identity_id == seat)
    assert len(conversations) == LEADS

    # Friday afternoon: every profile visited, the day's 10 invitations, the rest put off to
    # Monday's window.
    async def friday_done() -> bool:
        actions = await _rows(stack, Action, Action.identity_id == seat)
        capped = [a for a in actions if a.type == "linkedin_connection" and a.status == "queued"]
        return (
            len(_kinds(gateway, "profile_visit")) == LEADS
            and len(_kinds(gateway, "invitation")) == DAILY_CONNECTIONS
            and len(capped) == LEADS - DAILY_CONNECTIONS
            and all(a.not_before == MONDAY_09 for a in capped)
        )

    await eventually("every visit, 10 invitations, the rest put off", friday_done, 120 + LEADS)
    actions = await _rows(stack, Action, Action.identity_id == seat)
    sent = [a for a in actions if a.outcome == "sent"]
    assert all(a.performed_at and a.performed_at.weekday() < 5 for a in sent)
    assert all(a.performed_at and 9 <= a.performed_at.hour < 17 for a in sent)
    for kind in ("profile_visit", "invitation"):
        assert len(set(_kinds(gateway, kind))) == len(_kinds(gateway, kind))  # none twice

    shown = json.loads(_ok(_parley(stack, "identity", "show", str(seat), "--json")))
    assert shown["usage"]["linkedin_connection"]["today"] == DAILY_CONNECTIONS
    assert "daily cap" in shown["next_action"]["reason"], shown["next_action"]
    funnel = json.loads(_ok(_parley(stack, "campaign", "funnel", CAMPAIGN, "--json")))
    by_node = {node["node"]: node for node in funnel["nodes"]}
    assert by_node["visit"]["reached"] == LEADS
    assert by_node["wait_accept"]["reached"] == DAILY_CONNECTIONS

    # Suppress a lead whose invitation is still queued: nothing more goes to them.
    capped = [a for a in actions if a.type == "linkedin_connection" and a.status == "queued"]
    suppressed_action = capped[0]
    suppressed_cid = suppressed_action.conversation_id
    detail = (await stack.api("GET", f"/api/conversations/{suppressed_cid}")).json()
    suppressed_profile = detail["contact"]
    _ok(_parley(stack, "suppress", "add", suppressed_profile, "--reason", "manual"))
    assert suppressed_profile in _ok(_parley(stack, "suppress", "list"))

    # Version 2 of the message; the conversations waiting for an acceptance move to it.
    v2 = tmp_path / "seat-sequence-v2.yaml"
    v2.write_text(SEQUENCE.replace("MESSAGE_TEXT", V2_TEXT))
    published = json.loads(_ok(_parley(stack, "campaign", "publish", str(v2), "--json")))
    assert (published["version"], published["created"]) == (2, True)
    migrated = _parley(stack, "campaign", "migrate", CAMPAIGN, "--to", "2")
    _ok(migrated)
    versions = {v.id: v.version for v in await _rows(stack, CampaignVersion)}
    waiting_accept = [
        c
        for c in await _rows(stack, Conversation, Conversation.identity_id == seat)
        if c.current_node == "wait_accept"
    ]
    assert len(waiting_accept) == DAILY_CONNECTIONS
    assert all(versions[c.campaign_version_id] == 2 for c in waiting_accept)

    # One of them accepts: its message is version 2's.
    accepting = (await stack.api("GET", f"/api/conversations/{waiting_accept[0].id}")).json()
    accepting_profile = accepting["contact"]
    assert gateway.accept_invitation(SEAT, accepting_profile).wait(15)

    async def v2_message_sent() -> bool:
        return any(
            a.kind == "message" and "Version two" in (a.text or "")
            for a in gateway.actions_to(accepting_profile)
        )

    await eventually("version 2's message to the lead who accepted", v2_message_sent, 90)

    # The weekend sends nothing; Monday 09:01 the next 10 invitations, the suppressed lead's
    # invitation is skipped and its conversation ended.
    clock.set_offset(SATURDAY_12 - datetime.now(UTC))
    await asyncio.sleep(3)
    assert len(_kinds(gateway, "invitation")) == DAILY_CONNECTIONS
    clock.set_offset(MONDAY_0901 - datetime.now(UTC))

    async def monday_done() -> bool:
        return len(_kinds(gateway, "invitation")) == 2 * DAILY_CONNECTIONS

    await eventually("Monday's 10 invitations", monday_done, 180)
    skipped = {a.id: a for a in await _rows(stack, Action, Action.identity_id == seat)}[
        suppressed_action.id
    ]
    assert (skipped.status, skipped.outcome) == ("done", "skipped"), skipped.reason
    assert "suppressed" in (skipped.reason or "")

    async def suppressed_ended() -> bool:
        body = (await stack.api("GET", f"/api/conversations/{suppressed_cid}")).json()
        return bool(body["status"] in ("completed", "cancelled"))

    await eventually("the suppressed lead's conversation ended", suppressed_ended, 60)
    assert [a.kind for a in gateway.actions_to(suppressed_profile)] == ["profile_visit"]
    monday = [
        a
        for a in await _rows(stack, Action, Action.identity_id == seat)
        if a.type == "linkedin_connection" and a.outcome == "sent" and a.performed_at
    ]
    assert sum(a.performed_at >= MONDAY_09 for a in monday if a.performed_at) == (DAILY_CONNECTIONS)
    requests = sorted(a.performed_at for a in monday if a.performed_at)
    assert all(b - a >= timedelta(seconds=1) for a, b in itertools.pairwise(requests))
