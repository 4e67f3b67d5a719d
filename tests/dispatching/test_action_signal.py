"""An enqueue nudges the dispatcher: on PostgreSQL the enqueuing transaction notifies
``parley_actions``, and the dispatcher's tick loop, waiting on that LISTEN instead of sleeping,
performs the ready action at once. The tick here is ten minutes long, so an action performed
within the test's deadline was performed because of the notification, not the tick."""

# ruff: noqa: F811  (the outreach scenarios' fixtures, imported below, are requested by name)
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

import pytest
from prefect import flow

import prefect_adapter.outreach_tick
from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from flows import dispatcher as dispatcher_flow
from parley.action_signal import PostgresActionSignal, SleepingSignal, action_signal_for
from parley.db import Database, queries
from parley.runtime import Runtime
from parley.settings import Settings
from tests.dispatching.test_outreach import (  # noqa: F401
    _actions,
    _identity,
    _lead,
    _until_waiting,
    campaign,
    clock,
    gateway,
    rt,
)

LONG_TICK = 600.0  # the next tick would come ten minutes later
DEADLINE = 60.0  # generous for a loaded CI machine, and a tenth of the tick


async def _eventually(what: str, ready: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await ready():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_an_enqueue_wakes_a_waiting_listener_and_a_rolled_back_one_does_not(
    db: Database, rt: Runtime, campaign: str, gateway: FakeLinkedInGateway
) -> None:
    signal = action_signal_for(db.url)
    assert isinstance(signal, PostgresActionSignal)
    try:
        assert await signal.wait(0) is False and signal.listening  # listening, nothing told
        identity_id = await _identity(db, gateway)

        with pytest.raises(RuntimeError):  # NOTIFY is sent at commit: a rollback sends none
            async with db.transaction() as session:
                await queries.actions.notify_action_ready(session, identity_id)
                raise RuntimeError("rolled back")
        assert await signal.wait(0.5) is False

        waiting = asyncio.create_task(signal.wait(LONG_TICK))
        await _until_waiting(rt, await _lead(db, rt, campaign, identity_id, 1))
        [action] = await _actions(db, identity_id)
        assert (action.type, action.status, action.queue) == (
            "linkedin_profile_visit",
            "queued",
            "ready",
        )
        assert await asyncio.wait_for(waiting, DEADLINE) is True
    finally:
        await signal.close()


def test_sqlite_has_no_listener_and_sleeps_the_tick() -> None:
    assert isinstance(action_signal_for("sqlite+aiosqlite:///x.db"), SleepingSignal)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_the_dispatcher_performs_an_enqueued_action_long_before_its_next_tick(
    prefect_server: str,
    db: Database,
    rt: Runtime,
    campaign: str,
    gateway: FakeLinkedInGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"action-signal-{uuid4().hex[:8]}"
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

    identity_id = await _identity(db, gateway)
    running = asyncio.create_task(ticks())
    try:
        signal = prefect_adapter.outreach_tick.action_signal(rt)
        assert isinstance(signal, PostgresActionSignal)

        async def first_tick_over() -> bool:  # the loop now waits on the LISTEN
            if running.done():
                running.result()  # its error, if it died
            return signal.listening

        await _eventually("the dispatcher's first tick", first_tick_over, DEADLINE)
        assert gateway.performed == []

        conversation_id = await _lead(db, rt, campaign, identity_id, 1)
        await _until_waiting(rt, conversation_id)  # queues the profile visit

        async def performed() -> bool:  # the gateway's record comes before Parley's
            [action] = await _actions(db, identity_id)
            return action.status == "done"

        await _eventually("the visit, without waiting for the next tick", performed, DEADLINE)
        [action] = await _actions(db, identity_id)
        assert action.outcome == "sent", action.reason
        assert [a.kind for a in gateway.performed] == ["profile_visit"]
        assert not running.done()  # still the same tick's wait: woken, not ended
    finally:
        rt.stopping = True
        async with db.transaction() as session:  # wakes the loop, which sees it must stop
            await queries.actions.notify_action_ready(session, identity_id)
        totals: dict[str, Any] = await asyncio.wait_for(running, DEADLINE)
        await signal.close()
    assert totals.get("action sent") == 1, totals
