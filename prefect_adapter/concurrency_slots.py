"""Each identity's one-slot Prefect global concurrency limit, held while a dispatcher tick
works it: at most one action of an identity at a time, across dispatcher runs and hosts.

One lease for all the identities a tick works — one API call to take them, one to give them
back — instead of Prefect's ``concurrency()`` per identity, which cost two API calls, events
and a lease-renewal task each: ~130 ms of dispatcher CPU per identity, 8 actions/s in
``bench.dispatcher --with-slots``. When another dispatcher holds one of them, Prefect refuses
the whole set (423); the tick then takes them one lease each and skips those held elsewhere.

Strict, like ``concurrency(strict=True)``: an identity whose limit Prefect does not have (an
operator deleted it) is not worked this tick, never worked unlimited; its limit is created
again on the next. The lease is Prefect's minimum, 60 s, renewed every 20 s for as long as the
tick holds it: a provider call in flight keeps its identity's slot however slow it is (an SMTP
server taking 30 s a command), so no other dispatcher works that identity meanwhile. A tick
still starts no action after half a lease (``HeldSlots.expiring``), so ticks stay short; a
killed dispatcher stops renewing and its slots lapse on their own after a minute. A renewal
Prefect refuses (the lease is gone) stops the tick from starting more actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError

from parley.settings import get_settings
from prefect_adapter.client import prefect_api

log = logging.getLogger(__name__)

LEASE_SECONDS = 60.0  # Prefect's minimum: a killed dispatcher frees its identities after this
RENEW_EVERY_SECONDS = LEASE_SECONDS / 3
LOCKED = 423  # Prefect's answer when a slot of the set is taken
_PAGE = 200
_known_limits: set[str] = set()


def identity_limit(identity_id: int) -> str:
    return f"{get_settings().identity_limit_prefix}{identity_id}"


@dataclass
class HeldSlots:
    """The identities whose slots this tick holds, and until when it may start actions."""

    identity_ids: list[int]
    busy_elsewhere: list[int]
    deadline: float  # event-loop time: no action starts after it
    leases: list[UUID] = field(default_factory=list)
    lost: bool = False  # a renewal was refused: the slots may be someone else's now

    def expiring(self) -> bool:
        return self.lost or asyncio.get_running_loop().time() >= self.deadline


@contextlib.asynccontextmanager
async def identity_slots(identity_ids: Sequence[int]) -> AsyncIterator[HeldSlots]:
    """Hold the slots of as many of ``identity_ids`` as are free; give them back after."""
    names = {identity_limit(identity_id): identity_id for identity_id in identity_ids}
    await ensure_identity_limits(list(names))
    deadline = asyncio.get_running_loop().time() + LEASE_SECONDS / 2
    async with prefect_api() as client:
        held = await _take(client, names, deadline)
    renewer = asyncio.create_task(_renew_forever(held)) if held.leases else None
    try:
        yield held
    finally:
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        await _give_back(held.leases)


async def _renew_forever(held: HeldSlots) -> None:
    """Keep the tick's leases alive while its calls are in flight (one API call per lease
    every ``RENEW_EVERY_SECONDS``, not one per action)."""
    while True:
        await asyncio.sleep(RENEW_EVERY_SECONDS)
        try:
            async with prefect_api() as client:
                for lease_id in held.leases:
                    await client.renew_concurrency_lease(lease_id, lease_duration=LEASE_SECONDS)
        except PrefectHTTPStatusError as exc:
            held.lost = True
            log.error("identity slots lease lost (%r): no more actions this tick", exc)
            return
        except Exception as exc:  # Prefect away for a moment: the next renewal may still do
            log.warning("could not renew identity slots lease (%r); retrying", exc)


async def ensure_identity_limit(identity_id: int) -> None:
    await ensure_identity_limits([identity_limit(identity_id)])


async def ensure_identity_limits(names: Sequence[str]) -> None:
    """Create the limits Prefect does not have yet (one slot each); each name is looked up once
    per process, and many at once with one listing rather than one read each."""
    unknown = [name for name in names if name not in _known_limits]
    if not unknown:
        return
    async with prefect_api() as client:
        existing = await _existing_limits(client) if len(unknown) > 1 else set()
        _known_limits.update(existing)  # a limit deleted later is found missing when taken
        for name in unknown:
            if name not in existing:
                await _create_limit(client, name)
            _known_limits.add(name)


async def _existing_limits(client: PrefectClient) -> set[str]:
    names: set[str] = set()
    offset = 0
    while True:
        page = await client.read_global_concurrency_limits(limit=_PAGE, offset=offset)
        names.update(limit.name for limit in page)
        if len(page) < _PAGE:
            return names
        offset += _PAGE


async def _create_limit(client: PrefectClient, name: str) -> None:
    with contextlib.suppress(ObjectAlreadyExists):  # it exists (or another process made it)
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=1)
        )
        log.info("created global concurrency limit %r", name)


async def _take(client: PrefectClient, names: dict[str, int], deadline: float) -> HeldSlots:
    held = HeldSlots([], [], deadline)
    together = await _lease(client, list(names))
    if together is not None:
        _hold(held, names, *together)
        return held
    for name, identity_id in names.items():  # one of them is busy: find which
        alone = await _lease(client, [name])
        if alone is None:
            held.busy_elsewhere.append(identity_id)
        else:
            _hold(held, {name: identity_id}, *alone)
    return held


def _hold(held: HeldSlots, names: dict[str, int], lease_id: UUID, found: set[str]) -> None:
    held.leases.append(lease_id)
    for name, identity_id in names.items():
        if name in found:
            held.identity_ids.append(identity_id)
            continue
        _known_limits.discard(name)  # created again next tick; not worked without it
        log.error("identity %s: no Prefect concurrency limit %r; not worked", identity_id, name)


async def _lease(client: PrefectClient, names: list[str]) -> tuple[UUID, set[str]] | None:
    """One lease over one slot of each of ``names``, or None when one of them is taken."""
    try:
        response = await client.increment_concurrency_slots_with_lease(
            names=names, slots=1, mode="concurrency", lease_duration=LEASE_SECONDS
        )
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == LOCKED:
            return None
        raise
    body = response.json()
    return UUID(body["lease_id"]), {str(limit["name"]) for limit in body["limits"]}


async def _give_back(leases: list[UUID]) -> None:
    """Release each lease; one that fails lapses on its own after ``LEASE_SECONDS``."""
    if not leases:
        return
    async with prefect_api() as client:
        for lease_id in leases:
            try:
                await client.release_concurrency_slots_with_lease(lease_id)
            except Exception as exc:
                log.warning("could not release slots lease %s (%r); it lapses", lease_id, exc)
