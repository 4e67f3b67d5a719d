"""The dispatcher's outreach half: every identity with due actions, in parallel, at most one
action of an identity at a time.

"One at a time" is a Prefect global concurrency limit per identity, ``identity-{id}`` (one
slot, visible on the UI's Concurrency page), acquired with ``strict=True``: a missing limit is
an error, never silently unlimited. The dispatcher creates the limit the first time it meets
the identity (the REST API also does when an identity is added). A dispatcher run that finds an
identity's slot taken — another run or host is working that identity — skips it this tick.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from datetime import timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, concurrency
from prefect.exceptions import ObjectNotFound

from parley import outreach
from parley.action_signal import ActionSignal, action_signal_for
from parley.db import queries
from parley.db.models import utcnow
from parley.runtime import Runtime
from parley.settings import get_settings

log = logging.getLogger(__name__)

IDENTITIES_PER_TICK = 50
PARALLEL_IDENTITIES = 10
ACTIONS_PER_IDENTITY_PER_TICK = 20
SLOT_LEASE_SECONDS = 60.0  # Prefect's minimum: a killed dispatcher frees the slot after this
_known_limits: set[str] = set()
_rng = random.Random()
_signal: ActionSignal | None = None


def action_signal(rt: Runtime) -> ActionSignal:
    """This process's wake-up for ready actions: one LISTEN connection on PostgreSQL (kept
    across dispatcher runs, like the inbox's), a plain sleep on SQLite."""
    global _signal
    if _signal is None:
        _signal = action_signal_for(rt.db.url)
    return _signal


def identity_limit(identity_id: int) -> str:
    return f"{get_settings().identity_limit_prefix}{identity_id}"


async def ensure_identity_limit(identity_id: int) -> None:
    name = identity_limit(identity_id)
    if name in _known_limits:
        return
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=1)
            )
            log.info("created global concurrency limit %r", name)
    _known_limits.add(name)


async def outreach_tick(rt: Runtime) -> Counter[str]:
    """Due actions of every identity that has some, identities in parallel."""
    async with rt.db.read() as session:
        identity_ids = await queries.identities_with_due_actions(
            session, rt.clock.now(), IDENTITIES_PER_TICK
        )
    if not identity_ids:
        return Counter()
    gate = asyncio.Semaphore(PARALLEL_IDENTITIES)
    totals: Counter[str] = Counter()

    async def one(identity_id: int) -> None:
        async with gate:
            totals.update(await _drain(rt, identity_id))

    await asyncio.gather(*(one(identity_id) for identity_id in identity_ids))
    return totals


async def _drain(rt: Runtime, identity_id: int) -> Counter[str]:
    done: Counter[str] = Counter()
    try:
        await ensure_identity_limit(identity_id)
        async with concurrency(
            identity_limit(identity_id),
            occupy=1,
            timeout_seconds=0.5,
            lease_duration=SLOT_LEASE_SECONDS,
            strict=True,
        ):
            outcomes = await outreach.drain(
                rt,
                identity_id,
                _rng,
                limit=ACTIONS_PER_IDENTITY_PER_TICK,
                stopping=lambda: rt.stopping,
            )
            done.update(f"action {outcome}" for outcome in outcomes)
    except AcquireConcurrencySlotTimeoutError:
        done["identity busy elsewhere"] += 1
    except Exception as exc:  # one identity's trouble never stops the others
        log.warning("identity %s: outreach tick failed: %r", identity_id, exc)
        done["identity failed"] += 1
    return done


async def recover_abandoned_actions(rt: Runtime, older_than: timedelta) -> int:
    """Actions a dispatcher claimed and never finished (it was killed mid-call) go back to the
    queue with the same idempotency key: the gateway's ``Idempotency-Key`` and the email's
    Message-ID make the retry the same action, not a second one."""
    async with rt.db.transaction() as session:
        stale = await queries.stale_running_actions(session, utcnow() - older_than)
        for action in stale:
            action.status, action.updated_at = "queued", utcnow()
            action.reason = "its dispatcher stopped mid-action; retried with the same key"
    return len(stale)
