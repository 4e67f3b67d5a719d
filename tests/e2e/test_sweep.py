"""The dispatcher's repairs, one scenario each, against the session's real Prefect server and a
PostgreSQL database: flow runs are put in exactly the state each scenario needs (a deployment
nobody serves, so nothing moves unless the sweep moves it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.input.run_input import keyset_from_paused_state
from prefect.states import Cancelled, Failed, Running, Suspended
from sqlalchemy import select, update

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from flows.conversation import conversation
from parley.campaign.registry import CampaignCache, install_campaign
from parley.channels.base import OutboundMessage
from parley.channels.whatsapp.channel import WhatsAppChannel, WhatsAppConfig
from parley.conversation import executor, inbox, lifecycle
from parley.conversation.outbox import record_intent
from parley.db import Database, queries
from parley.db.models import Conversation, Message, utcnow
from parley.runtime import Runtime
from parley.settings import Settings
from parley.vocabulary import DeliveryStatus, Status
from prefect_adapter import repairs
from prefect_adapter.repairs import Repair, claim_work, repair
from prefect_adapter.resume_form import ResumeInput
from prefect_adapter.runs import carry_out, start_run
from tests.storage.conftest import PHONE_ID, make_batch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@dataclass
class World:
    db: Database
    rt: Runtime
    settings: Settings
    deployment_id: UUID
    campaign: str
    phones: Callable[[], str]


@pytest.fixture
async def world(prefect_server: str, database_factory: Any, tmp_path: Path) -> AsyncIterator[World]:
    name = f"sweep-{uuid4().hex[:8]}"
    deployment = await conversation.ato_deployment(name=name)
    deployment_id = await deployment.aapply()  # type: ignore[union-attr]
    db = Database(database_factory("postgresql"))
    async with db.transaction() as session:
        version = await install_campaign(session, ROOT / "examples/campaigns/onboarding.yaml")
    settings = Settings(
        conversation_deployment=f"conversation/{name}", lease_seconds=3, data_dir=tmp_path
    )
    counter = iter(range(10**6))
    rt = Runtime(db=db, channels={}, post_json=_no_http, campaigns=CampaignCache())
    yield World(db, rt, settings, deployment_id, version.name, lambda: f"3460{next(counter):07d}")
    await db.dispose()


async def _no_http(*_args: object, **_kwargs: object) -> dict[str, Any]:
    raise AssertionError("no http node runs in these tests")


async def _conversation(world: World, *, text: str = "hi") -> int:
    batch = make_batch(text)
    message = batch.messages[0]
    phone = world.phones()
    batch.messages[0] = type(message)(
        **{
            **{f: getattr(message, f) for f in message.__dataclass_fields__},
            "contact_address": phone,
        }
    )
    await inbox.store_batch(world.db, batch, world.campaign)
    async with world.db.read() as session:
        contact = await queries.contacts.ensure_contact(session, "whatsapp", phone, None)
        rows = await session.execute(
            select(Conversation).where(Conversation.contact_id == contact.id)
        )
        return int(rows.scalars().one().id)


async def _set_row(world: World, conversation_id: int, **values: Any) -> None:
    async with world.db.transaction() as session:
        row = await queries.conversations.lock_conversation(session, conversation_id)
        for key, value in values.items():
            setattr(row, key, value)


async def _row(world: World, conversation_id: int) -> Conversation:
    async with world.db.read() as session:
        return await queries.conversations.get_conversation(session, conversation_id)


async def _run(world: World, conversation_id: int, state: object | None = None) -> str:
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            world.deployment_id, parameters={"conversation_id": conversation_id}
        )
        if state is not None:
            await client.set_flow_run_state(run.id, state, force=True)  # type: ignore[arg-type]
    await _set_row(world, conversation_id, flow_run_id=str(run.id))
    return str(run.id)


async def _paused_run(world: World, conversation_id: int) -> str:
    """A run suspended exactly as the flow suspends itself, input schema included."""
    run_id = await _run(world, conversation_id, Running())
    state = Suspended(timeout_seconds=None, pause_key="wait-1-1")
    keyset = keyset_from_paused_state(state)
    state.state_details.run_input_keyset = keyset
    async with get_client() as client:
        await client.set_flow_run_state(UUID(run_id), state, force=True)
    await ResumeInput.asave(keyset, flow_run_id=UUID(run_id))
    return run_id


async def _state(run_id: str) -> StateType:
    async with get_client() as client:
        run = await client.read_flow_run(UUID(run_id))
    assert run.state is not None
    return run.state.type


async def _suspended_with_unread(world: World, conversation_id: int) -> None:
    await inbox.store_batch(world.db, make_batch("an answer"), world.campaign)  # other contact
    async with world.db.transaction() as session:
        await session.execute(
            update(Message)
            .where(Message.conversation_id == conversation_id)
            .values(consumed_step=None)
        )
    await _set_row(  # suspended a while ago: the run had its chance to pause
        world,
        conversation_id,
        status=Status.SUSPENDED,
        waiting_for="reply",
        updated_at=utcnow() - timedelta(seconds=10),
    )


async def _expire_handovers(world: World, conversation_ids: list[int]) -> None:
    async with world.db.transaction() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id.in_(conversation_ids))
            .values(handed_over_at=utcnow() - timedelta(minutes=1), repair_after=None)
        )


async def test_a_conversation_prefect_never_started_is_started_after_the_webhooks_grace(
    world: World,
) -> None:
    cid = await _conversation(world)
    assert not await claim_work(world.rt, world.settings, trust_leases=True)  # webhook first
    await _set_row(world, cid, created_at=utcnow() - timedelta(seconds=5))
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert work.repairs == (Repair("start", cid, None),)
    assert await repair(world.rt, world.settings, work) == {"started": 1}
    row = await _row(world, cid)
    assert row.flow_run_id and await _state(row.flow_run_id) == StateType.SCHEDULED


async def test_a_suspended_run_with_a_message_waiting_is_resumed(world: World) -> None:
    cid = await _conversation(world)
    run_id = await _paused_run(world, cid)
    await _suspended_with_unread(world, cid)
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert work.repairs == (Repair("resume", cid, run_id),)
    assert await repair(world.rt, world.settings, work) == {"resumed": 1}
    assert await _state(run_id) == StateType.SCHEDULED  # back to a worker, with its input


async def test_a_run_between_marking_itself_suspended_and_pausing_is_left_alone(
    world: World,
) -> None:
    """The row says suspended, a message waits, Prefect still has the run Running: it is alive
    and about to pause (the webhook's resume is retrying). Rescheduling it now would make its
    suspend fail — the bug that failed live conversations."""
    cid = await _conversation(world)
    run_id = await _run(world, cid, Running())
    await _suspended_with_unread(world, cid)
    await _set_row(world, cid, updated_at=utcnow())  # it marked itself suspended just now
    assert not await claim_work(world.rt, world.settings, trust_leases=True)
    assert await _state(run_id) == StateType.RUNNING


async def test_two_sweeps_racing_over_a_live_long_conversation_never_reschedule_it(
    world: World,
) -> None:
    """Its Prefect Running state started minutes ago, but its lease is renewed: it is alive."""
    cid = await _conversation(world)
    run_id = await _run(world, cid, Running())
    await _set_row(world, cid, status=Status.HOT, lease_until=utcnow() + timedelta(seconds=3))
    first, second = await asyncio.gather(
        claim_work(world.rt, world.settings, trust_leases=True),
        claim_work(world.rt, world.settings, trust_leases=True),
    )
    assert not first and not second
    assert await _state(run_id) == StateType.RUNNING


async def test_two_sweeps_racing_over_a_dead_run_reschedule_it_once(world: World) -> None:
    cid = await _conversation(world)
    run_id = await _run(world, cid, Running())
    await _set_row(world, cid, status=Status.HOT, lease_until=utcnow() - timedelta(seconds=1))
    first, second = await asyncio.gather(
        claim_work(world.rt, world.settings, trust_leases=True),
        claim_work(world.rt, world.settings, trust_leases=True),
    )
    claimed = [work for work in (first, second) if work]
    assert len(claimed) == 1 and claimed[0].repairs == (Repair("recover", cid, run_id),)
    assert await repair(world.rt, world.settings, claimed[0]) == {"rescheduled": 1}
    # The other sweep acting on what it read before: the state moved on, nothing happens.
    assert await repair(world.rt, world.settings, claimed[0]) == {"scheduled for a worker": 1}
    async with get_client() as client:
        states = await client.read_flow_run_states(UUID(run_id))
    assert [s.name for s in states].count("Rescheduled") == 1


@pytest.mark.parametrize(
    ("took_over_as", "lease"),
    [(Status.RUNNING, timedelta(seconds=3)), (Status.SUSPENDED, None)],
    ids=["renewed-its-lease", "suspended-itself"],
)
async def test_a_run_a_worker_started_late_is_not_rescheduled_by_the_sweep_that_claimed_it(
    world: World, took_over_as: Status, lease: timedelta | None
) -> None:
    """Seen on a loaded CI machine: the run was created, no worker took it for longer than a
    lease, so a sweep claimed the row as lost — and while that sweep talked to Prefect, a
    worker started the run and took the row over. Acting on what it had claimed, the sweep
    rescheduled the live run; the run's suspend then failed, and five such rounds failed the
    conversation. The recovery reads the row again, under its lock, before it acts."""
    cid = await _conversation(world)
    run_id = await _run(world, cid, Running())
    await _expire_handovers(world, [cid])
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert work.repairs == (Repair("recover", cid, run_id),)
    lease_until = utcnow() + lease if lease is not None else None
    await _set_row(world, cid, status=took_over_as, lease_until=lease_until)  # the takeover
    assert await repair(world.rt, world.settings, work) == {"moved on": 1}
    assert await _state(run_id) == StateType.RUNNING
    assert (await _row(world, cid)).recoveries == 0


async def test_a_run_still_untaken_when_its_recovery_acts_is_rescheduled(world: World) -> None:
    cid = await _conversation(world)
    run_id = await _run(world, cid, Running())  # Prefect says running: nobody took the row
    await _expire_handovers(world, [cid])
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert await repair(world.rt, world.settings, work) == {"rescheduled": 1}
    assert await _state(run_id) == StateType.SCHEDULED
    assert (await _row(world, cid)).recoveries == 1


async def test_expired_leases_are_not_trusted_while_the_dispatcher_itself_was_cut_off(
    world: World,
) -> None:
    cid = await _conversation(world)
    await _run(world, cid, Running())
    await _set_row(world, cid, status=Status.RUNNING, lease_until=utcnow() - timedelta(seconds=9))
    assert not await claim_work(world.rt, world.settings, trust_leases=False)
    assert await claim_work(world.rt, world.settings, trust_leases=True)


async def test_a_failed_run_of_an_active_conversation_is_rescheduled_then_failed_for_good(
    world: World,
) -> None:
    cid = await _conversation(world)
    run_id = await _run(world, cid, Failed(message="database unreachable for 5 minutes"))
    found = await repairs.failed_runs_of_active_conversations(
        world.db, world.settings, utcnow() - timedelta(minutes=1)
    )
    assert found == (Repair("recover", cid, run_id),)
    assert await repair(world.rt, world.settings, repairs.SweepWork(found)) == {"rescheduled": 1}
    assert (await _row(world, cid)).recoveries == 1
    await _set_row(world, cid, recoveries=repairs.MAX_RECOVERIES)
    async with get_client() as client:
        await client.set_flow_run_state(UUID(run_id), Failed(message="again"), force=True)
    assert await repair(world.rt, world.settings, repairs.SweepWork(found)) == {"failed": 1}
    row = await _row(world, cid)
    assert row.status == Status.FAILED and "kept failing" in (row.last_error or "")


async def test_a_run_cancelled_in_prefect_cancels_its_conversation_and_drops_unsent(
    world: World,
) -> None:
    cid = await _conversation(world)
    run_id = await _run(world, cid, Cancelled())
    async with world.db.transaction() as session:
        await record_intent(session, cid, 0, f"conv-{cid}-step-0", OutboundMessage("hello"))
    found = await repairs.failed_runs_of_active_conversations(
        world.db, world.settings, utcnow() - timedelta(minutes=1)
    )
    assert await repair(world.rt, world.settings, repairs.SweepWork(found)) == {"cancelled": 1}
    row = await _row(world, cid)
    assert row.status == Status.CANCELLED
    async with world.db.read() as session:
        intent = await queries.messages.outbound_by_ref(session, f"conv-{cid}-step-0")
    assert intent is not None and intent.status == DeliveryStatus.DROPPED
    assert run_id


async def test_a_conversation_whose_run_is_gone_gets_a_new_run(world: World) -> None:
    cid = await _conversation(world)
    ghost = str(uuid4())
    await _set_row(world, cid, flow_run_id=ghost, status=Status.RUNNING, lease_until=utcnow())
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert await repair(world.rt, world.settings, work) == {"rehomed": 1}
    row = await _row(world, cid)
    assert row.flow_run_id not in (None, ghost)
    assert await _state(str(row.flow_run_id)) == StateType.SCHEDULED


async def test_150_conversations_that_can_never_be_resumed_do_not_delay_a_healthy_wake_up(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their runs are stuck Running with no process: every resume is refused. Even with a batch
    smaller than their number, the healthy conversation is resumed in the first tick it is owed
    one, and the stuck ones back off instead of being retried every tick."""
    monkeypatch.setattr(repairs, "BATCH", 20)
    stuck = [await _conversation(world) for _ in range(150)]
    gate = asyncio.Semaphore(20)

    async def make_stuck(cid: int) -> None:
        async with gate:
            await _run(world, cid, Running())
            await _suspended_with_unread(world, cid)

    await asyncio.gather(*(make_stuck(cid) for cid in stuck))
    tried: set[int] = set()
    for _ in range(20):  # ticks until every stuck row has failed at least once
        work = await claim_work(world.rt, world.settings, trust_leases=True)
        await repair(world.rt, world.settings, work)
        tried |= {item.conversation_id for item in work.repairs}
        if tried >= set(stuck):
            break
    assert tried >= set(stuck)
    # A lease later they are all owed a repair again, and keep failing: still no starvation.
    await _expire_handovers(world, stuck)
    healthy = await _conversation(world)
    run_id = await _paused_run(world, healthy)
    await _suspended_with_unread(world, healthy)
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert Repair("resume", healthy, run_id) in work.repairs
    outcomes = await repair(world.rt, world.settings, work)
    assert outcomes.get("resumed") == 1
    assert await _state(run_id) == StateType.SCHEDULED


# --- repairs never fight a live run -----------------------------------------------------------


async def _marked_suspended_just_now(world: World, cid: int, kind: str) -> None:
    """The run committed "suspended" a moment ago and is about to pause: Prefect still has it
    Running. What each kind of repair finds owed then: a due timer, an operator's change."""
    now = utcnow()
    values: dict[str, Any] = {"status": Status.SUSPENDED, "updated_at": now, "lease_until": None}
    if kind == "wake":
        values |= {"waiting_for": "timer", "wake_at": now - timedelta(seconds=1)}
    else:
        values |= {"waiting_for": "operator", "wake_requested_at": now}
    await _set_row(world, cid, **values)


@pytest.mark.parametrize("kind", ["wake", "look"])
async def test_a_wake_or_look_repair_leaves_a_run_about_to_pause_alone(
    world: World, kind: str
) -> None:
    """A timer came due, or an operator signalled, while the run sat between marking itself
    suspended and pausing. The repair's resume finds it not paused; rescheduling it then would
    make its suspend fail. It waits for the pause instead, and the run stays Running."""
    cid = await _conversation(world)
    run_id = await _run(world, cid, Running())
    await _marked_suspended_just_now(world, cid, kind)
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert work.repairs == (Repair(kind, cid, run_id),)  # type: ignore[arg-type]
    assert await repair(world.rt, world.settings, work) == {"waiting for its pause": 1}
    assert await _state(run_id) == StateType.RUNNING
    assert (await _row(world, cid)).recoveries == 0


async def test_a_resume_repair_leaves_a_run_that_suspended_again_since_the_claim_alone(
    world: World,
) -> None:
    """Claimed as owed a resume (suspended a lease ago, a message waiting); before the repair
    acts, the run was resumed by the webhook, ran, and marked itself suspended again: alive,
    about to pause. The repair acts on the row as it is now."""
    cid = await _conversation(world)
    run_id = await _run(world, cid, Running())
    await _suspended_with_unread(world, cid)
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert work.repairs == (Repair("resume", cid, run_id),)
    await _set_row(world, cid, updated_at=utcnow())  # suspended again, just now
    assert await repair(world.rt, world.settings, work) == {"waiting for its pause": 1}
    assert await _state(run_id) == StateType.RUNNING


@pytest.mark.parametrize("kind", ["resume", "wake", "look"])
async def test_a_run_that_never_paused_in_a_lease_is_rescheduled_by_any_repair(
    world: World, kind: str
) -> None:
    """The guard's other side: suspended for longer than a lease while Prefect still says
    Running, its process is gone; each kind of repair gives it back to a worker."""
    cid = await _conversation(world)
    run_id = await _run(world, cid, Running())
    if kind == "resume":
        await _suspended_with_unread(world, cid)
    else:
        await _marked_suspended_just_now(world, cid, kind)
        await _set_row(world, cid, updated_at=utcnow() - timedelta(seconds=10))
    work = await claim_work(world.rt, world.settings, trust_leases=True)
    assert work.repairs == (Repair(kind, cid, run_id),)  # type: ignore[arg-type]
    assert await repair(world.rt, world.settings, work) == {"rescheduled": 1}
    assert await _state(run_id) == StateType.SCHEDULED


# --- recoveries count failures in a row ---------------------------------------------------------


async def _fail_and_repair(world: World, cid: int, run_id: str) -> dict[str, int]:
    async with get_client() as client:
        await client.set_flow_run_state(UUID(run_id), Failed(message="worker killed"), force=True)
    found = await repairs.failed_runs_of_active_conversations(
        world.db, world.settings, utcnow() - timedelta(minutes=1)
    )
    assert found == (Repair("recover", cid, run_id),)
    return await repair(world.rt, world.settings, repairs.SweepWork(found))


async def test_worker_kills_weeks_apart_do_not_fail_a_conversation_that_steps_between_them(
    world: World,
) -> None:
    """Five kills in a row with no step between fail it (the run cannot get anywhere); five
    unrelated kills over its life do not: a step resets the count."""
    fake = FakeWhatsAppAPI(access_token="t", phone_number_id=PHONE_ID)
    fake.start()
    channel = WhatsAppChannel(
        WhatsAppConfig(fake.api_url, "t", PHONE_ID, "app-secret", "verify", timeout_seconds=2)
    )
    stepping = replace(world.rt, channels={"whatsapp": channel})
    try:
        cid = await _conversation(world)
        run_id = await _run(world, cid, Running())
        for _ in range(repairs.MAX_RECOVERIES):
            assert await _fail_and_repair(world, cid, run_id) == {"rescheduled": 1}
        assert (await _row(world, cid)).recoveries == repairs.MAX_RECOVERIES
        await executor.begin_run(stepping, cid, run_id)  # the rescheduled run takes over
        cursor = await executor.run_step(stepping, cid, 0)  # and makes a step: progress
        assert cursor.step == 1 and (await _row(world, cid)).recoveries == 0
        assert await _fail_and_repair(world, cid, run_id) == {"rescheduled": 1}
        row = await _row(world, cid)
        assert row.status != Status.FAILED and row.recoveries == 1
        for _ in range(repairs.MAX_RECOVERIES - 1):  # in a row again, with no step between
            assert await _fail_and_repair(world, cid, run_id) == {"rescheduled": 1}
        assert await _fail_and_repair(world, cid, run_id) == {"failed": 1}
        assert (await _row(world, cid)).status == Status.FAILED
    finally:
        await channel.aclose()
        fake.stop()


# --- a retry runs a run of its own --------------------------------------------------------------


async def test_a_retried_conversation_gets_a_new_run_not_its_failed_one_back(
    world: World,
) -> None:
    """The failed run's idempotency key must not be reused: Prefect would answer with the old
    FAILED run, the API would say the run was reached, and nothing would run for a lease. A
    second retry gets a third run; two starters racing over one retry agree on one run."""
    cid = await _conversation(world)
    first = await start_run(world.db, world.settings, cid)
    async with get_client() as client:
        await client.set_flow_run_state(UUID(first), Failed(message="node failed"), force=True)
    await executor.mark_failed(world.rt, cid, "the CRM refused")
    runs = [first]
    for _ in range(2):
        change = await lifecycle.retry(world.db, cid)
        assert change.run == "start"
        assert await carry_out(world.db, world.settings, change)
        again = await start_run(world.db, world.settings, cid)  # the dispatcher, racing
        row = await _row(world, cid)
        assert row.flow_run_id == again and row.flow_run_id not in runs
        assert await _state(again) == StateType.SCHEDULED  # a worker will take it now
        runs.append(again)
        async with get_client() as client:
            await client.set_flow_run_state(UUID(again), Failed(message="again"), force=True)
        await executor.mark_failed(world.rt, cid, "failed again")
    assert len(set(runs)) == 3
