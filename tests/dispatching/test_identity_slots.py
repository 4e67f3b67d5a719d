"""The per-identity Prefect slots a dispatcher tick holds, against the session's real Prefect
server: one lease for the tick's identities, an identity held elsewhere skipped (never worked
twice at once), a missing limit never worked unlimited, every slot given back after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

import prefect_adapter.concurrency_slots as slots
from parley.settings import get_settings


@pytest.fixture
def limit_prefix(monkeypatch: pytest.MonkeyPatch, prefect_server: str) -> Iterator[str]:
    """A prefix of this test's own: the session's Prefect server is shared by every test."""
    prefix = f"identity-s{uuid.uuid4().hex[:8]}-"
    monkeypatch.setenv("PARLEY_IDENTITY_LIMIT_PREFIX", prefix)
    get_settings.cache_clear()
    yield prefix
    get_settings.cache_clear()


@pytest.fixture
async def client(limit_prefix: str) -> AsyncIterator[PrefectClient]:
    async with get_client() as prefect:
        yield prefect


async def _active(client: PrefectClient, name: str) -> int:
    return (await client.read_global_concurrency_limit_by_name(name)).active_slots


async def test_a_tick_holds_every_identitys_slot_and_gives_them_all_back(
    client: PrefectClient, limit_prefix: str
) -> None:
    async with slots.identity_slots([1, 2, 3]) as held:
        assert sorted(held.identity_ids) == [1, 2, 3]
        assert len(held.leases) == 1  # one lease for the tick, not one per identity
        assert [await _active(client, f"{limit_prefix}{n}") for n in (1, 2, 3)] == [1, 1, 1]
        assert not held.expiring()
    assert [await _active(client, f"{limit_prefix}{n}") for n in (1, 2, 3)] == [0, 0, 0]


async def test_limits_are_created_with_one_slot_the_first_time_an_identity_is_met(
    client: PrefectClient, limit_prefix: str
) -> None:
    async with slots.identity_slots([7]):
        pass
    limit = await client.read_global_concurrency_limit_by_name(f"{limit_prefix}7")
    assert limit.limit == 1


async def test_an_identity_held_by_another_dispatcher_is_skipped_and_the_others_are_worked(
    client: PrefectClient, limit_prefix: str
) -> None:
    async with slots.identity_slots([2]) as elsewhere:  # another run or host works identity 2
        assert elsewhere.identity_ids == [2]
        async with slots.identity_slots([1, 2, 3]) as held:
            assert sorted(held.identity_ids) == [1, 3]
            assert held.busy_elsewhere == [2]
            assert await _active(client, f"{limit_prefix}2") == 1  # still only the other's
        assert await _active(client, f"{limit_prefix}1") == 0
    assert await _active(client, f"{limit_prefix}2") == 0


async def test_an_identity_whose_limit_was_deleted_is_not_worked_and_gets_it_back_next_tick(
    client: PrefectClient, limit_prefix: str
) -> None:
    async with slots.identity_slots([4, 5]):
        pass
    await client.delete_global_concurrency_limit_by_name(f"{limit_prefix}5")  # an operator
    async with slots.identity_slots([4, 5]) as held:
        assert held.identity_ids == [4]  # strict: never worked without its slot
    async with slots.identity_slots([4, 5]) as held:
        assert sorted(held.identity_ids) == [4, 5]
    assert (await client.read_global_concurrency_limit_by_name(f"{limit_prefix}5")).limit == 1


async def test_an_existing_limit_is_used_as_it_is(client: PrefectClient, limit_prefix: str) -> None:
    await client.create_global_concurrency_limit(
        GlobalConcurrencyLimitCreate(name=f"{limit_prefix}9", limit=1)
    )
    async with slots.identity_slots([9, 10]) as held:
        assert sorted(held.identity_ids) == [9, 10]
        assert await _active(client, f"{limit_prefix}9") == 1


async def test_a_call_in_flight_past_the_lease_keeps_the_identitys_slot(
    client: PrefectClient, limit_prefix: str
) -> None:
    """A provider call slower than the 60 s lease (an SMTP server taking 30 s a command):
    the tick's lease is renewed, so Prefect never frees the slot under it and no other
    dispatcher can take the identity while the call is in flight. Without the renewal the
    server's repossessor (every 5 s here) frees it a minute in."""
    loop = asyncio.get_running_loop()
    async with slots.identity_slots([11]) as held:
        assert held.identity_ids == [11]
        past_the_lease = loop.time() + slots.LEASE_SECONDS + 12  # the lapse, then two sweeps
        while loop.time() < past_the_lease:  # the call in flight
            assert await _active(client, f"{limit_prefix}11") == 1
            async with slots.identity_slots([11]) as other:
                assert other.identity_ids == [] and other.busy_elsewhere == [11]
            await asyncio.sleep(2)
        assert not held.lost
    assert await _active(client, f"{limit_prefix}11") == 0
