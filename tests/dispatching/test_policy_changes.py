"""An operator's change of an identity's policy or timezone takes effect now, and the dispatcher
counts as far back as the policy's caps reach — on SQLite and PostgreSQL, through the core
function, the CLI and the REST API, and once with the dispatcher's own loop on a real Prefect
API. The outreach scenarios' identity, leads, loopback LinkedIn gateway and driven clock."""

# ruff: noqa: F811  (the outreach scenarios' fixtures, imported below, are requested by name)
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley.cli import app
from parley.clock import DrivenClock
from parley.db import Database, queries
from parley.db.models import Action, Identity
from parley.outreach import dispatch, identities
from parley.outreach.limits import WEEK_OF_HISTORY, LimitPolicy, history_needed
from parley.runtime import Runtime
from parley.settings import Settings, get_settings
from tests.dispatching.test_outreach import (  # noqa: F401
    NO_SPACING,
    _actions,
    _identity,
    _lead,
    _seeded,
    _until_waiting,
    campaign,
    clock,
    gateway,
    rt,
)
from tests.operator_api import operator_api
from webhook.routes import identities as identity_routes

API_KEY = "operator-key-for-policy-tests-0123"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
OFFICE = {day: ["09:00-17:00"] for day in WEEKDAYS}
LONGER_DAYS = {day: ["09:00-20:00"] for day in WEEKDAYS}
TUESDAY_1730 = datetime(2026, 12, 8, 17, 30, tzinfo=UTC)
WEDNESDAY_09 = datetime(2026, 12, 9, 9, 0, tzinfo=UTC)
THURSDAY_09 = datetime(2026, 12, 10, 9, 0, tzinfo=UTC)
runner = CliRunner()


def _policy(weekly: dict[str, list[str]], limits: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"working_hours": {"weekly": weekly}, "limits": NO_SPACING if limits is None else limits}


async def _queued_visits(
    db: Database, rt: Runtime, campaign: str, identity_id: int, n: int
) -> None:
    for lead in range(n):
        await _until_waiting(rt, await _lead(db, rt, campaign, identity_id, lead))


# --- rolling caps longer than a week ----------------------------------------------------------


async def _sends_ago(db: Database, rt: Runtime, identity_id: int, *days: int) -> None:
    now = rt.clock.now()
    async with db.transaction() as session:
        for n, ago in enumerate(days):
            at = now - timedelta(days=ago)
            session.add(
                Action(
                    identity_id=identity_id,
                    channel="linkedin",
                    type="linkedin_profile_visit",
                    payload={},
                    not_before=at,
                    status="done",
                    outcome="sent",
                    idempotency_key=f"earlier-{n}",
                    performed_at=at,
                )
            )


THIRTY = [{"count": 2, "per": "30d"}]
THIRTY_DAYS_TWO = {"actions": {"linkedin_profile_visit": {"rolling": THIRTY, "spacing": "0s"}}}


def test_the_history_a_decision_needs_reaches_its_types_longest_window() -> None:
    policy = LimitPolicy.from_config(
        {
            "actions": {
                "linkedin_profile_visit": {"rolling": [{"count": 5, "per": "1h"}, *THIRTY]},
                "linkedin_message": {"spacing": "9d", "jitter": "1d"},
            }
        }
    )
    assert history_needed(policy, "linkedin_profile_visit") == timedelta(days=30)
    assert history_needed(policy, "linkedin_message") == timedelta(days=10)
    assert history_needed(policy, "email") == WEEK_OF_HISTORY  # this week, on any clock
    with pytest.raises(ValueError, match="unknown action type"):
        history_needed(policy, "fax")  # type: ignore[arg-type]


async def test_rolling_cap_of_30_days_counts_sends_9_days_ago(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway, limits=THIRTY_DAYS_TWO)
    await _sends_ago(db, rt, identity_id, 9, 10)
    await _queued_visits(db, rt, campaign, identity_id, 1)

    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "waiting"
    assert gateway.performed == []
    visit = (await _actions(db, identity_id))[-1]
    assert visit.status == "queued"
    assert visit.reason is not None and "rolling cap 2 per" in visit.reason, visit.reason
    # Free in 20 days, beyond what a wait may last: asked again in 6 days, and flagged.
    assert visit.not_before >= rt.clock.now() + timedelta(days=5)
    async with db.read() as session:
        identity = await session.get(Identity, identity_id)
        assert identity is not None and identity.flagged and "rolling cap" in identity.flagged
    shown = await identities.explain(db, identity_id, clock=rt.clock)
    assert shown["status"]["state"] == "rolling_cap", shown["status"]


async def test_rolling_cap_of_30_days_forgets_sends_31_days_ago(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway, limits=THIRTY_DAYS_TWO)
    await _sends_ago(db, rt, identity_id, 9, 31)
    await _queued_visits(db, rt, campaign, identity_id, 1)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "sent"
    assert [a.kind for a in gateway.performed] == ["profile_visit"]


# --- the storage half: which waits a policy change undoes --------------------------------------


async def test_a_policy_change_makes_only_put_off_actions_due_in_their_order(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway
) -> None:
    identity_id = await _identity(db, gateway, weekly=OFFICE)
    now = rt.clock.now()
    later = now + timedelta(hours=5)

    def action(key: str, **values: Any) -> Action:
        fields: dict[str, Any] = {
            "identity_id": identity_id,
            "channel": "linkedin",
            "type": "linkedin_message",
            "payload": {"to": "lead"},
            "not_before": later,
            "idempotency_key": f"{key}-{uuid4().hex}",
            **values,
        }
        return Action(**fields)

    async with db.transaction() as session:
        rows = {
            "put_off_first": action("a", put_off=True),
            "put_off_second": action("b", put_off=True, not_before=later + timedelta(hours=1)),
            "backoff": action("c", attempts=2, not_before=now + timedelta(seconds=60)),
            "due": action("d", not_before=now - timedelta(minutes=5)),
            "parked": action("e", put_off=True, queue="linkedin"),
            "running": action("f", put_off=True, status="running"),
        }
        session.add_all(rows.values())
        await session.flush()
        ids = {name: row.id for name, row in rows.items()}
    other = await identities.add_identity(db, "linkedin", "another-seat")
    async with db.transaction() as session:
        session.add(
            Action(
                identity_id=other["id"],
                channel="linkedin",
                type="linkedin_message",
                payload={},
                not_before=later,
                put_off=True,
                idempotency_key=f"other-{uuid4().hex}",
            )
        )

    async with db.transaction() as session:
        moved = await queries.actions.redecide_put_off(session, identity_id, now)
    assert moved == 2

    by_id = {a.id: a for a in await _actions(db, identity_id)}
    due_at = now - timedelta(minutes=5)  # the queue's earliest: ahead of what was due after them
    assert by_id[ids["put_off_first"]].not_before == due_at
    assert by_id[ids["put_off_second"]].not_before == due_at
    assert by_id[ids["put_off_first"]].reason == (
        "to be decided again: the identity's policy changed"
    )
    assert not by_id[ids["put_off_first"]].put_off
    assert by_id[ids["backoff"]].not_before == now + timedelta(seconds=60)  # an error's wait
    assert by_id[ids["parked"]].not_before == later and by_id[ids["parked"]].queue == "linkedin"
    assert by_id[ids["running"]].not_before == later
    async with db.read() as session:
        order = await session.execute(
            select(Action.id)
            .where(Action.identity_id == identity_id, Action.status == "queued")
            .where(Action.queue == "ready")
            .order_by(Action.not_before, Action.id)
        )
        assert list(order.scalars()) == [
            ids["put_off_first"],
            ids["put_off_second"],
            ids["due"],
            ids["backoff"],
        ]
        untouched = await session.execute(
            select(Action.not_before).where(Action.identity_id == other["id"])
        )
        assert list(untouched.scalars()) == [later]


async def test_a_policy_change_keeps_a_provider_block_and_a_retry_backoff(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway, weekly=OFFICE)
    await _queued_visits(db, rt, campaign, identity_id, 2)
    gateway.fail_next("rate_limited", 429, retry_after=7200)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "retrying"
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "waiting"  # the block
    blocked, put_off = await _actions(db, identity_id)
    assert (blocked.put_off, put_off.put_off) == (False, True)
    assert put_off.reason is not None and "rate-limited" in put_off.reason

    await identities.update_identity(db, identity_id, policy=_policy(LONGER_DAYS), clock=rt.clock)
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=20) == ["waiting"]
    assert gateway.performed == []
    after_blocked, after_put_off = await _actions(db, identity_id)
    assert after_blocked.not_before == blocked.not_before  # Retry-After, as the 429 said
    assert after_put_off.not_before == blocked.not_before  # decided again: the block holds
    assert after_put_off.reason is not None and "rate-limited" in after_put_off.reason

    clock.advance(timedelta(hours=2, minutes=1))
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=20) == ["sent", "sent", "idle"]


async def test_a_policy_change_keeps_a_transient_errors_backoff(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway, weekly=OFFICE)
    await _queued_visits(db, rt, campaign, identity_id, 1)
    gateway.fail_next("internal_error", 503)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "retrying"
    [backing_off] = await _actions(db, identity_id)
    await identities.update_identity(db, identity_id, policy=_policy(LONGER_DAYS), clock=rt.clock)
    [after] = await _actions(db, identity_id)
    assert (after.not_before, after.put_off) == (backing_off.not_before, False)
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=20) == ["idle"]
    assert gateway.performed == []


# --- the scenario over each way an operator changes an identity --------------------------------


@pytest.fixture
def cli_env(db: Database, clock: DrivenClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PARLEY_DATABASE_URL", db.url)
    monkeypatch.setenv("PARLEY_CLOCK_FILE", str(clock.path))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


Change = Callable[[int, dict[str, Any]], Awaitable[dict[str, Any]]]


@pytest.fixture(params=["cli", "rest"])
def change(
    request: pytest.FixtureRequest, db: Database, clock: DrivenClock, cli_env: None
) -> Change:
    """``parley identity update`` or ``PATCH /api/identities/{id}``, with their own clock read
    from the driven clock's file, as in production."""

    async def over_cli(identity_id: int, body: dict[str, Any]) -> dict[str, Any]:
        arguments = ["identity", "update", str(identity_id), "--json"]
        if "policy" in body:
            arguments += ["--policy-json", json.dumps(body["policy"])]
        if "timezone" in body:
            arguments += ["--timezone", body["timezone"]]
        result = await asyncio.to_thread(runner.invoke, app, arguments)
        assert result.exit_code == 0, result.output
        return dict(json.loads(result.output))

    async def over_rest(identity_id: int, body: dict[str, Any]) -> dict[str, Any]:
        settings = Settings(api_keys=API_KEY, clock_file=clock.path)
        async with operator_api(
            db, identity_routes.router, api_key=API_KEY, settings=settings
        ) as api:
            answer = await api.patch(f"/api/identities/{identity_id}", json=body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    return over_cli if request.param == "cli" else over_rest


async def _both_put_off_until_wednesday(
    db: Database, rt: Runtime, campaign: str, identity_id: int, clock: DrivenClock
) -> None:
    clock.set_offset(TUESDAY_1730 - datetime.now(UTC))
    await _queued_visits(db, rt, campaign, identity_id, 2)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "waiting"
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "waiting"
    waiting = await _actions(db, identity_id)
    assert [(a.status, a.not_before) for a in waiting] == [("queued", WEDNESDAY_09)] * 2


async def test_opening_hours_over_cli_and_rest_sends_the_waiting_actions_on_the_next_drain(
    db: Database,
    rt: Runtime,
    campaign: str,
    gateway: FakeLinkedInGateway,
    clock: DrivenClock,
    change: Change,
) -> None:
    identity_id = await _identity(db, gateway, weekly=OFFICE)
    await _both_put_off_until_wednesday(db, rt, campaign, identity_id, clock)

    changed = await change(identity_id, {"policy": _policy(LONGER_DAYS)})
    assert changed["policy"]["working_hours"]["weekly"]["tue"] == ["09:00-20:00"]
    assert changed["queued"]["ready"] == 2
    shown = await identities.explain(db, identity_id, clock=rt.clock)
    assert shown["status"]["state"] == "moving", shown["status"]

    assert await dispatch.drain(rt, identity_id, _seeded(), limit=20) == ["sent", "sent", "idle"]
    assert [a.kind for a in gateway.performed] == ["profile_visit", "profile_visit"]


async def test_narrowing_hours_over_cli_and_rest_puts_the_waiting_action_off_further(
    db: Database,
    rt: Runtime,
    campaign: str,
    gateway: FakeLinkedInGateway,
    change: Change,
) -> None:
    """Tuesday 10:00, the day's one visit done: the next waits for Wednesday 09:00. The
    operator closes Tuesdays and Wednesdays: it waits for Thursday, said at once."""
    one_a_day = {"actions": {"linkedin_profile_visit": {"daily": 1, "spacing": "0s"}}}
    identity_id = await _identity(db, gateway, weekly=OFFICE, limits=one_a_day)
    await _sends_ago(db, rt, identity_id, 0)
    await _queued_visits(db, rt, campaign, identity_id, 1)
    assert await dispatch.perform_next(rt, identity_id, _seeded()) == "waiting"
    assert (await _actions(db, identity_id))[-1].not_before == WEDNESDAY_09

    narrower = {day: ["09:00-17:00"] for day in ("mon", "thu", "fri")}
    await change(identity_id, {"policy": _policy(narrower, one_a_day)})
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=20) == ["waiting"]
    visit = (await _actions(db, identity_id))[-1]
    assert (visit.status, visit.not_before) == ("queued", THURSDAY_09)
    assert gateway.performed == []
    shown = await identities.explain(db, identity_id, clock=rt.clock)
    assert "Thu 2026-12-10 09:00" in shown["status"]["sentence"], shown["status"]


async def test_a_timezone_change_over_cli_and_rest_takes_effect_now(
    db: Database,
    rt: Runtime,
    campaign: str,
    gateway: FakeLinkedInGateway,
    clock: DrivenClock,
    change: Change,
) -> None:
    """17:30 in London is 12:30 in New York: the same office hours are open there."""
    identity_id = await _identity(db, gateway, weekly=OFFICE)
    await _both_put_off_until_wednesday(db, rt, campaign, identity_id, clock)
    await change(identity_id, {"timezone": "America/New_York"})
    assert await dispatch.drain(rt, identity_id, _seeded(), limit=20) == ["sent", "sent", "idle"]


async def test_a_change_that_is_not_the_policy_leaves_the_waits(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway, clock: DrivenClock
) -> None:
    identity_id = await _identity(db, gateway, weekly=OFFICE)
    await _both_put_off_until_wednesday(db, rt, campaign, identity_id, clock)
    same = await identities.update_identity(db, identity_id, name="Seat", clock=rt.clock)
    assert same["name"] == "Seat"
    assert [(a.not_before, a.put_off) for a in await _actions(db, identity_id)] == [
        (WEDNESDAY_09, True)
    ] * 2


# --- with the dispatcher's own loop -------------------------------------------------------------

LONG_TICK = 600.0  # the next tick would come ten minutes later
DEADLINE = 60.0


async def _eventually(what: str, ready: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await ready():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_opening_hours_sends_actions_waiting_for_tomorrow_within_a_tick(
    prefect_server: str,
    db: Database,
    rt: Runtime,
    campaign: str,
    gateway: FakeLinkedInGateway,
    clock: DrivenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two visits wait for Wednesday's window; the operator opens Tuesday evening over the
    REST API, and the running dispatcher sends both long before its next tick (ten minutes):
    the change told it (NOTIFY), and its decision under the new hours says go."""
    from prefect import flow

    import prefect_adapter.outreach_tick
    from flows import dispatcher as dispatcher_flow

    name = f"policy-change-{uuid4().hex[:8]}"
    deployment = await dispatcher_flow.dispatcher.ato_deployment(name=name)
    await deployment.aapply()  # type: ignore[union-attr]  # its dead runs are looked for
    settings = Settings(
        dispatcher_deployment=f"dispatcher/{name}",
        dispatcher_tick_seconds=LONG_TICK,
        dispatcher_interval_seconds=2 * LONG_TICK,
        dispatcher_limit=f"parley-dispatcher-{name}",
    )

    async def the_runtime() -> Runtime:
        return rt

    monkeypatch.setattr(dispatcher_flow, "get_runtime", the_runtime)
    monkeypatch.setattr(prefect_adapter.outreach_tick, "_signal", None)  # this test's own LISTEN

    @flow(name="dispatcher-ticks-under-test")
    async def ticks() -> dict[str, int]:
        return dict(await dispatcher_flow._Ticks(settings).run())

    identity_id = await _identity(db, gateway, weekly=OFFICE)
    await _both_put_off_until_wednesday(db, rt, campaign, identity_id, clock)
    running = asyncio.create_task(ticks())
    signal = prefect_adapter.outreach_tick.action_signal(rt)
    try:

        async def first_tick_over() -> bool:  # the loop now waits on the LISTEN
            if running.done():
                running.result()  # its error, if it died
            return bool(getattr(signal, "listening", False))

        await _eventually("the dispatcher's first tick", first_tick_over, DEADLINE)
        assert gateway.performed == []  # nothing is due before Wednesday

        api_settings = Settings(api_keys=API_KEY, clock_file=clock.path)
        async with operator_api(
            db, identity_routes.router, api_key=API_KEY, settings=api_settings
        ) as api:
            answer = await api.patch(
                f"/api/identities/{identity_id}", json={"policy": _policy(LONGER_DAYS)}
            )
        assert answer.status_code == 200, answer.text

        async def both_done() -> bool:
            return all(a.status == "done" for a in await _actions(db, identity_id))

        await _eventually("both visits, without waiting for the next tick", both_done, DEADLINE)
        assert [a.outcome for a in await _actions(db, identity_id)] == ["sent", "sent"]
        assert [a.kind for a in gateway.performed] == ["profile_visit", "profile_visit"]
        assert not running.done()  # the same tick's wait: woken, not ended
    finally:
        rt.stopping = True
        async with db.transaction() as session:  # wakes the loop, which sees it must stop
            await queries.actions.notify_action_ready(session, identity_id)
        totals: dict[str, Any] = await asyncio.wait_for(running, DEADLINE)
        await signal.close()
    assert totals.get("action sent") == 2, totals
