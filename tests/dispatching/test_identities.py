"""Identities and seeing their queue: adding, listing, changing them with their policy, reconnecting
a parked channel, and the explanation `parley identity show` gives — on SQLite and PostgreSQL,
through the core functions, the CLI and the REST API."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from parley.cli import app
from parley.db import Database
from parley.db.models import Action, Identity
from parley.errors import AlreadyExists, ConfigurationError, InvalidInput, NotFound
from parley.outreach import identities
from parley.outreach.identities import IdentityPolicy, format_wait
from parley.outreach.limits import DEFAULT_POLICY
from parley.settings import get_settings
from tests.operator_api import operator_api
from webhook.routes import identities as identity_routes

MADRID = ZoneInfo("Europe/Madrid")
FRIDAY_1701 = datetime(2026, 12, 4, 17, 1, tzinfo=MADRID)
TUESDAY_NOON = datetime(2026, 12, 8, 12, 0, tzinfo=MADRID)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
OFFICE_TO_FIVE = {"working_hours": {"weekly": {day: ["09:00-17:00"] for day in WEEKDAYS}}}
API_KEY = "operator-key-for-tests-0123456789"
runner = CliRunner()


async def add_action(
    db: Database,
    identity_id: int,
    kind: str,
    *,
    not_before: datetime,
    queue: str = "ready",
    channel: str | None = None,
    outcome: str | None = None,
    performed_at: datetime | None = None,
) -> int:
    async with db.transaction() as session:
        action = Action(
            identity_id=identity_id,
            channel=channel or kind.split("_")[0],
            type=kind,
            payload={"to": "lead"},
            queue=queue,
            not_before=not_before,
            status="done" if outcome else "queued",
            outcome=outcome,
            idempotency_key=uuid.uuid4().hex,
            performed_at=performed_at,
        )
        session.add(action)
        await session.flush()
        return action.id


async def ready_ids(db: Database, identity_id: int) -> list[int]:
    async with db.read() as session:
        stmt = (
            select(Action.id)
            .where(Action.identity_id == identity_id, Action.queue == "ready")
            .where(Action.status == "queued")
            .order_by(Action.not_before, Action.id)
        )
        return list((await session.scalars(stmt)).all())


async def queue_of(db: Database, action_ids: list[int]) -> list[str]:
    async with db.read() as session:
        rows = await session.scalars(select(Action).where(Action.id.in_(action_ids)))
        by_id = {row.id: row.queue for row in rows}
    return [by_id[i] for i in action_ids]


async def park(db: Database, identity_id: int, *queues: str) -> None:
    async with db.transaction() as session:
        identity = await session.get(Identity, identity_id)
        assert identity is not None
        identity.parked = {
            **identity.parked,
            **{q: {"reason": f"{q} down", "since": "2026-12-04T10:00:00+00:00"} for q in queues},
        }


# --- the policy model -------------------------------------------------------------------------


def test_policy_defaults_are_office_hours_on_the_identitys_clock() -> None:
    policy = IdentityPolicy.from_config({}, timezone="Europe/Madrid")
    assert policy.limits == DEFAULT_POLICY
    assert policy.working_hours.timezone == MADRID
    assert policy.working_hours.is_open(datetime(2026, 12, 7, 17, 59, tzinfo=MADRID))
    assert not policy.working_hours.is_open(datetime(2026, 12, 5, 10, 0, tzinfo=MADRID))
    assert IdentityPolicy.default("UTC").working_hours.timezone.key == "UTC"


def test_a_partial_policy_keeps_the_default_weekly_windows_and_caps() -> None:
    policy = IdentityPolicy.from_config(
        {
            "working_hours": {"holidays": ["2026-12-08"]},
            "limits": {"actions": {"linkedin_connection": {"daily": 10}}},
        },
        timezone="Europe/Madrid",
    )
    assert not policy.working_hours.is_open(TUESDAY_NOON)  # the holiday
    assert policy.working_hours.is_open(TUESDAY_NOON + timedelta(days=1))
    connection = policy.limits.limits_for("linkedin_connection")
    assert (connection.daily, connection.weekly) == (10, 100)


def test_every_bad_part_of_a_policy_is_named() -> None:
    with pytest.raises(ConfigurationError) as raised:
        IdentityPolicy.from_config(
            {
                "limts": {},
                "working_hours": {"weekly": {"mnday": ["09:00-17:00"]}},
                "limits": {"actions": {"linkedin_connection": {"daily": -1, "daliy": 3}}},
            }
        )
    message = str(raised.value)
    for named in ("limts", "mnday", "linkedin_connection.daily", "daliy"):
        assert named in message, message


def test_a_policy_timezone_other_than_the_identitys_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="differs from the identity's timezone"):
        IdentityPolicy.from_config({"working_hours": {"timezone": "UTC"}}, timezone="Asia/Tokyo")


def test_waits_read_as_hours_and_minutes() -> None:
    assert format_wait(timedelta(hours=63, minutes=59, seconds=30)) == "63 h 59 min"
    assert format_wait(timedelta(minutes=12)) == "12 min"
    assert format_wait(timedelta(seconds=20)) == "less than a minute"


# --- adding, listing, changing ----------------------------------------------------------------


async def test_add_and_list_with_settings_masked(db: Database) -> None:
    added = await identities.add_identity(
        db,
        "email",
        "Ana@Example.COM",
        name="Ana's mailbox",
        timezone="Europe/Madrid",
        settings={"smtp_host": "smtp.example.com", "smtp_port": 587, "password": "hunter2"},
    )
    assert added["address"] == "Ana@example.com"  # the domain is normalised
    assert added["settings"] == {
        "smtp_host": "smtp.example.com",
        "smtp_port": 587,
        "password": "•••",
    }
    linkedin = await identities.add_identity(db, "linkedin", "acc-1")
    assert linkedin["timezone"] == "UTC" and linkedin["policy"] == {}

    listed = await identities.list_identities(db)
    assert [row["id"] for row in listed] == [added["id"], linkedin["id"]]
    assert listed[0]["name"] == "Ana's mailbox"
    assert "hunter2" not in json.dumps(listed)
    async with db.read() as session:
        stored = await session.get(Identity, added["id"])
        assert stored is not None and stored.settings["password"] == "hunter2"


async def test_a_duplicate_channel_and_address_is_refused(db: Database) -> None:
    await identities.add_identity(db, "email", "ana@example.com")
    with pytest.raises(AlreadyExists, match="exists already"):
        await identities.add_identity(db, "email", "ana@EXAMPLE.com")
    await identities.add_identity(db, "linkedin", "ana@example.com")  # another channel: fine


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"channel": "fax", "address": "1"}, "channel"),
        ({"channel": "email", "address": "not-an-email"}, "address"),
        ({"channel": "whatsapp", "address": "call me"}, "address"),
        ({"channel": "linkedin", "address": "acc", "timezone": "Mars/Olympus"}, "timezone"),
        ({"channel": "linkedin", "address": "acc", "policy": {"limts": {}}}, "limts"),
        (
            {
                "channel": "linkedin",
                "address": "acc",
                "policy": {"working_hours": {"weekly": {"mon": ["9-5"]}}},
            },
            "working_hours.weekly.mon",
        ),
        (
            {
                "channel": "linkedin",
                "address": "acc",
                "timezone": "UTC",
                "policy": {"working_hours": {"timezone": "Europe/Madrid"}},
            },
            "working_hours.timezone",
        ),
    ],
)
async def test_invalid_input_is_refused_naming_the_field(
    db: Database, arguments: dict[str, Any], named: str
) -> None:
    arguments = dict(arguments)  # shared by both backends' runs
    channel, address = arguments.pop("channel"), arguments.pop("address")
    with pytest.raises(InvalidInput, match=named.replace(".", r"\.")):
        await identities.add_identity(db, channel, address, **arguments)
    assert await identities.list_identities(db) == []


async def test_a_policy_timezone_becomes_the_identitys_and_dates_are_stored_as_text(
    db: Database,
) -> None:
    from datetime import date

    added = await identities.add_identity(
        db,
        "linkedin",
        "acc-2",
        policy={"working_hours": {"timezone": "Europe/Madrid", "holidays": [date(2026, 12, 8)]}},
    )
    assert added["timezone"] == "Europe/Madrid"
    assert added["policy"] == {"working_hours": {"holidays": ["2026-12-08"]}}


async def test_update_changes_only_what_is_given(db: Database) -> None:
    added = await identities.add_identity(
        db,
        "email",
        "bo@example.com",
        name="Bo",
        settings={"smtp_host": "a.example.com", "password": "pw", "username": "bo"},
        policy=OFFICE_TO_FIVE,
    )
    updated = await identities.update_identity(
        db,
        added["id"],
        timezone="Asia/Tokyo",
        settings={"smtp_host": "b.example.com", "password": "pw-b", "username": None},
    )  # a new host needs its password again (test_identity_secrets.py)
    assert updated["timezone"] == "Asia/Tokyo"
    assert updated["name"] == "Bo"
    assert updated["policy"] == OFFICE_TO_FIVE
    assert updated["settings"] == {"smtp_host": "b.example.com", "password": "•••"}

    policy = {"limits": {"actions": {"email": {"daily": 10}}}}
    updated = await identities.update_identity(db, added["id"], name="", policy=policy)
    assert updated["name"] is None and updated["policy"] == policy
    shown = await identities.explain(db, added["id"], now=TUESDAY_NOON)
    assert shown["usage"]["email"]["daily_cap"] == 10
    assert shown["working_hours"]["weekly"]["mon"] == ["09:00-18:00"]  # the default again

    with pytest.raises(InvalidInput, match="daily"):
        await identities.update_identity(
            db, added["id"], policy={"limits": {"actions": {"email": {"daily": "lots"}}}}
        )
    with pytest.raises(NotFound):
        await identities.update_identity(db, 999_999, name="x")


async def test_update_clears_the_flag(db: Database) -> None:
    added = await identities.add_identity(db, "linkedin", "acc-flag")
    async with db.transaction() as session:
        identity = await session.get(Identity, added["id"])
        assert identity is not None
        identity.flagged = "no working hours within 7 days"
    assert (await identities.update_identity(db, added["id"]))["flagged"]
    assert (await identities.update_identity(db, added["id"], clear_flag=True))["flagged"] is None


# --- reconnect --------------------------------------------------------------------------------


async def test_reconnect_unparks_only_that_channel_in_order(db: Database) -> None:
    seat = (await identities.add_identity(db, "linkedin", "acc-seat"))["id"]
    other = (await identities.add_identity(db, "linkedin", "acc-other"))["id"]
    base = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    ready = await add_action(db, seat, "linkedin_message", not_before=base + timedelta(hours=2))
    parked = [
        await add_action(db, seat, "linkedin_connection", queue="linkedin", not_before=base + d)
        for d in (timedelta(hours=3), timedelta(hours=1), timedelta(hours=1), timedelta(0))
    ]
    credits = [
        await add_action(db, seat, "linkedin_inmail", queue="credits", not_before=base)
        for _ in range(2)
    ]
    others = [
        await add_action(db, other, "linkedin_message", queue="linkedin", not_before=base)
        for _ in range(2)
    ]
    await park(db, seat, "linkedin", "credits")
    await park(db, other, "linkedin")

    assert await identities.reconnect(db, seat, "linkedin") == 4

    a0, a1, a2, a3 = parked  # by not_before: a3, then a1 and a2 (same time: by id), ready, a0
    assert await ready_ids(db, seat) == [a3, a1, a2, ready, a0]
    assert await queue_of(db, credits) == ["credits", "credits"]
    assert await queue_of(db, others) == ["linkedin", "linkedin"]
    listed = {row["id"]: row for row in await identities.list_identities(db)}
    assert list(listed[seat]["parked"]) == ["credits"]
    assert listed[seat]["parked"]["credits"]["actions"] == 2
    assert listed[other]["parked"]["linkedin"]["actions"] == 2

    assert await identities.reconnect(db, seat, "linkedin") == 0  # nothing left: harmless
    assert await identities.reconnect(db, seat, "credits") == 2
    assert (await identities.list_identities(db))[0]["parked"] == {}


async def test_reconnect_a_mailbox_and_refusals(db: Database) -> None:
    mailbox = await identities.add_identity(db, "email", "cy@example.com")
    queue = f"email-{mailbox['address']}"
    parked = await add_action(
        db, mailbox["id"], "email", queue=queue, not_before=datetime(2026, 12, 4, tzinfo=UTC)
    )
    await park(db, mailbox["id"], queue)
    assert await identities.reconnect(db, mailbox["id"], "email") == 1
    assert await ready_ids(db, mailbox["id"]) == [parked]

    with pytest.raises(InvalidInput, match="email identity"):
        await identities.reconnect(db, mailbox["id"], "linkedin")
    with pytest.raises(InvalidInput, match="cannot be reconnected"):
        await identities.reconnect(db, mailbox["id"], "whatsapp")
    with pytest.raises(NotFound):
        await identities.reconnect(db, 999_999, "email")


# --- explain: why the queue is not moving -------------------------------------------------------


async def test_friday_1701_waits_for_monday_0900(db: Database) -> None:
    seat = await identities.add_identity(
        db, "linkedin", "acc-friday", timezone="Europe/Madrid", policy=OFFICE_TO_FIVE
    )
    action = await add_action(
        db, seat["id"], "linkedin_message", not_before=FRIDAY_1701 - timedelta(hours=1)
    )
    shown = await identities.explain(db, seat["id"], now=FRIDAY_1701)

    status = shown["status"]
    assert status["state"] == "outside_working_hours"
    assert "Mon 2026-12-07 09:00 Europe/Madrid" in status["sentence"]
    assert "63 h 59 min" in status["sentence"]
    assert status["until"] == "2026-12-07T08:00:00+00:00"
    assert status["wait_seconds"] == (63 * 60 + 59) * 60
    assert shown["next_action"]["id"] == action and shown["queued"]["ready"] == 1
    assert shown["working_hours"]["open_now"] is False
    assert shown["working_hours"]["next_open_local"] == "Mon 2026-12-07 09:00 Europe/Madrid"


async def test_a_daily_cap_waits_for_the_next_window_tomorrow(db: Database) -> None:
    seat = await identities.add_identity(db, "linkedin", "acc-capped", timezone="Europe/Madrid")
    start = TUESDAY_NOON.replace(hour=9)
    for n in range(20):
        at = start + n * timedelta(minutes=5)
        await add_action(
            db, seat["id"], "linkedin_connection", not_before=at, outcome="sent", performed_at=at
        )
    await add_action(db, seat["id"], "linkedin_connection", not_before=start)
    shown = await identities.explain(db, seat["id"], now=TUESDAY_NOON)

    status = shown["status"]
    assert status["state"] == "daily_cap"
    assert "daily cap 20 of linkedin_connection" in status["sentence"]
    assert "Wed 2026-12-09 09:00 Europe/Madrid" in status["sentence"]
    assert "21 h" in status["sentence"]
    assert shown["usage"]["linkedin_connection"] == {
        "today": 20,
        "this_week": 20,
        "daily_cap": 20,
        "weekly_cap": 100,
    }
    assert set(shown["usage"]) == {
        "linkedin_connection",
        "linkedin_message",
        "linkedin_inmail",
        "linkedin_profile_visit",
        "linkedin_attachment",
        "linkedin_voice",
        "linkedin_like_post",
    }
    # Other types are not capped: a message would go now.
    await add_action(db, seat["id"], "linkedin_message", not_before=start - timedelta(hours=1))
    assert (await identities.explain(db, seat["id"], now=TUESDAY_NOON))["status"][
        "state"
    ] == "moving"


async def test_a_parked_linkedin_queue_says_how_to_reconnect(db: Database) -> None:
    seat = await identities.add_identity(db, "linkedin", "acc-parked", timezone="Europe/Madrid")
    for _ in range(3):
        await add_action(
            db, seat["id"], "linkedin_message", queue="linkedin", not_before=FRIDAY_1701
        )
    await park(db, seat["id"], "linkedin")
    shown = await identities.explain(db, seat["id"], now=TUESDAY_NOON)

    assert shown["parked"]["linkedin"] == {
        "reason": "linkedin down",
        "since": "2026-12-04T10:00:00+00:00",
        "actions": 3,
    }
    status = shown["status"]
    assert status["state"] == "parked"
    assert "3 action(s) parked in 'linkedin'" in status["sentence"]
    assert f"parley identity reconnect {seat['id']} linkedin" in status["sentence"]
    assert shown["next_action"] is None
    assert shown["queued"] == {"ready": 0, "parked": 3, "held": 0}


async def test_provider_block_idle_and_not_due(db: Database) -> None:
    seat = await identities.add_identity(db, "linkedin", "acc-429", timezone="Europe/Madrid")
    assert (await identities.explain(db, seat["id"], now=TUESDAY_NOON))["status"]["state"] == (
        "idle"
    )
    later = TUESDAY_NOON + timedelta(hours=2)
    await add_action(db, seat["id"], "linkedin_message", not_before=later)
    not_due = (await identities.explain(db, seat["id"], now=TUESDAY_NOON))["status"]
    assert not_due["state"] == "not_due" and "in 2 h 0 min" in not_due["sentence"]

    async with db.transaction() as session:
        identity = await session.get(Identity, seat["id"])
        assert identity is not None
        identity.blocked_until = {
            "linkedin/linkedin_message": (later + timedelta(hours=1)).isoformat()
        }
    blocked = (await identities.explain(db, seat["id"], now=TUESDAY_NOON))["status"]
    assert blocked["state"] == "provider_limit"
    assert "rate-limited" in blocked["sentence"] and "Tue 2026-12-08 15:00" in blocked["sentence"]


async def test_explaining_an_unknown_identity_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound):
        await identities.explain(db, 999_999, now=TUESDAY_NOON)


# --- the CLI ----------------------------------------------------------------------------------


async def cli(*arguments: str) -> Any:
    return await asyncio.to_thread(runner.invoke, app, list(arguments))


async def test_cli_add_list_show_update_reconnect(cli_db: Database, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "working_hours:\n"
        "  weekly: {mon: ['09:00-17:00'], tue: ['09:00-17:00']}\n"
        "  holidays: [2026-12-25]\n"
        "limits:\n"
        "  actions:\n"
        "    linkedin_connection: {daily: 10}\n"
    )
    added = await cli(
        "identity", "add", "linkedin", "acc-cli", "--name", "Seat", "--timezone",
        "Europe/Madrid", "--policy", str(policy), "--settings-json", '{"api_key": "k-1"}',
        "--json",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    row = json.loads(added.output)
    assert row["policy"]["working_hours"]["holidays"] == ["2026-12-25"]
    assert row["settings"] == {"api_key": "•••"}
    identity_id = str(row["id"])

    listed = await cli("identity", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["address"] for r in json.loads(listed.output)] == ["acc-cli"]
    assert "acc-cli" in (await cli("identity", "list")).output

    shown = await cli("identity", "show", identity_id, "--json")
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert detail["usage"]["linkedin_connection"]["daily_cap"] == 10
    assert detail["status"]["state"] == "idle"
    text = await cli("identity", "show", identity_id)
    assert text.exit_code == 0, text.output
    assert "nothing is queued" in text.output and "usage" in text.output

    updated = await cli(
        "identity", "update", identity_id, "--policy-json", '{"limits": {}}', "--json"
    )
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.output)["policy"] == {"limits": {}}

    await add_action(
        cli_db, row["id"], "linkedin_message", queue="linkedin", not_before=FRIDAY_1701
    )
    await park(cli_db, row["id"], "linkedin")
    assert "parked linkedin" in (await cli("identity", "show", identity_id)).output
    reconnected = await cli("identity", "reconnect", identity_id, "linkedin", "--json")
    assert reconnected.exit_code == 0, reconnected.output
    assert json.loads(reconnected.output)["unparked"] == 1


async def test_cli_refusals_exit_1(cli_db: Database, tmp_path: Path) -> None:
    assert (await cli("identity", "add", "email", "dee@example.com")).exit_code == 0
    duplicate = await cli("identity", "add", "email", "dee@example.com")
    assert duplicate.exit_code == 1 and "exists already" in duplicate.output
    invalid = await cli("identity", "add", "email", "eve@example.com", "--policy-json", '{"x": 1}')
    assert invalid.exit_code == 1 and "'x'" in invalid.output
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    unreadable = await cli("identity", "add", "email", "eve@example.com", "--policy", str(broken))
    assert unreadable.exit_code == 1 and "cannot read" in unreadable.output
    assert (await cli("identity", "show", "999999")).exit_code == 1
    assert (await cli("identity", "reconnect", "1", "whatsapp")).exit_code == 1
    listed = json.loads((await cli("identity", "list", "--json")).output)
    assert [r["address"] for r in listed] == ["dee@example.com"]


# --- the REST API -----------------------------------------------------------------------------


def _api(db: Database) -> httpx.AsyncClient:
    return operator_api(db, identity_routes.router, api_key=API_KEY)


async def test_rest_identities(db: Database) -> None:
    async with _api(db) as api:
        body = {"channel": "linkedin", "address": "acc-api", "timezone": "Europe/Madrid"}
        created = await api.post("/api/identities", json=body)
        assert created.status_code == 201, created.text
        identity_id = created.json()["id"]
        assert (await api.post("/api/identities", json=body)).status_code == 409
        invalid = await api.post(
            "/api/identities",
            json={"channel": "linkedin", "address": "acc-2", "policy": {"limits": {"x": 1}}},
        )
        assert invalid.status_code == 422 and "limits: x" in invalid.json()["detail"]

        listed = await api.get("/api/identities")
        assert [row["id"] for row in listed.json()] == [identity_id]
        shown = await api.get(f"/api/identities/{identity_id}")
        assert shown.status_code == 200 and shown.json()["status"]["state"] == "idle"
        assert (await api.get("/api/identities/999999")).status_code == 404

        patched = await api.patch(f"/api/identities/{identity_id}", json={"name": "Seat"})
        assert patched.status_code == 200 and patched.json()["name"] == "Seat"
        assert patched.json()["timezone"] == "Europe/Madrid"
        bad = await api.patch(f"/api/identities/{identity_id}", json={"timezone": "Nowhere"})
        assert bad.status_code == 422
        assert (await api.patch("/api/identities/999999", json={})).status_code == 404

        await add_action(
            db, identity_id, "linkedin_message", queue="linkedin", not_before=FRIDAY_1701
        )
        await park(db, identity_id, "linkedin")
        reconnected = await api.post(
            f"/api/identities/{identity_id}/reconnect", json={"channel": "linkedin"}
        )
        assert reconnected.status_code == 200, reconnected.text
        assert reconnected.json() == {"id": identity_id, "channel": "linkedin", "unparked": 1}
        wrong = await api.post(
            f"/api/identities/{identity_id}/reconnect", json={"channel": "email"}
        )
        assert wrong.status_code == 422

        api.headers.pop("Authorization")
        assert (await api.get("/api/identities")).status_code == 401


@pytest.fixture
def limit_prefix(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A prefix of this test's own: the session's Prefect server is shared by every test."""
    prefix = f"identity-t{uuid.uuid4().hex[:8]}-"
    monkeypatch.setenv("PARLEY_IDENTITY_LIMIT_PREFIX", prefix)
    get_settings.cache_clear()
    yield prefix
    get_settings.cache_clear()


async def test_rest_adding_an_identity_creates_its_prefect_concurrency_limit(
    db: Database, prefect_server: str, limit_prefix: str
) -> None:
    from prefect.client.orchestration import get_client

    async with _api(db) as api:
        created = await api.post("/api/identities", json={"channel": "email", "address": "a@x.io"})
    assert created.status_code == 201, created.text
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(
            f"{limit_prefix}{created.json()['id']}"
        )
    assert limit.limit == 1  # one action of the identity at a time, before its first action


async def test_rest_adding_an_identity_while_prefect_is_away_still_adds_it(
    db: Database, limit_prefix: str
) -> None:
    """The limit is a convenience at this point (the dispatcher creates a missing one before
    it acts): Prefect being down must not refuse the operator."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from devkit.stack.processes import free_port

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        async with _api(db) as api:
            created = await api.post(
                "/api/identities", json={"channel": "email", "address": "b@x.io"}
            )
            listed = await api.get("/api/identities")
    assert created.status_code == 201, created.text
    assert [row["address"] for row in listed.json()] == ["b@x.io"]


async def test_rest_starting_a_lead_while_prefect_hangs_answers_within_the_wait_and_keeps_it(
    db: Database,
) -> None:
    """A Prefect that accepts the connection and never answers (overloaded, a stuck proxy)
    must not hold the operator's call past its timeout: the API answers run_reached false
    after PARLEY_API_RUN_WAIT_SECONDS, and the conversation is stored for the dispatcher."""
    import socket
    import time

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from parley.campaign.registry import install_campaign
    from parley.settings import Settings
    from prefect_adapter.client import close_prefect_api
    from webhook.routes import api as api_routes

    await close_prefect_api()  # the process's client of the session's server: not this one

    async with db.transaction() as session:
        await install_campaign(
            session, Path(__file__).parents[2] / "examples/campaigns/outreach.yaml"
        )
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/api"
        settings = Settings(api_keys=API_KEY, api_run_wait_seconds=0.5)
        with temporary_settings({PREFECT_API_URL: url}):
            async with (
                _api(db) as identities_api,
                operator_api(db, api_routes.router, api_key=API_KEY, settings=settings) as api,
            ):
                seat = await identities_api.post(
                    "/api/identities", json={"channel": "linkedin", "address": "seat-hang"}
                )
                started_at = time.monotonic()
                started = await api.post(
                    "/api/conversations",
                    json={
                        "campaign": "outreach",
                        "identity_id": seat.json()["id"],
                        "address": "urn:li:lead-hang",
                        "fields": {"email": "lead@example.com"},
                        "variables": {"first_name": "Ada"},
                    },
                )
                waited = time.monotonic() - started_at
                assert started.status_code == 201, started.text
                shown = await api.get(f"/api/conversations/{started.json()['id']}")
            await close_prefect_api()  # its client of the silent server goes with it
    assert started.status_code == 201, started.text
    assert started.json()["run"] == "start" and started.json()["run_reached"] is False
    assert waited < 5  # the wait, not the Prefect client's own timeout and retries
    assert shown.status_code == 200 and shown.json()["status"] == "pending"
