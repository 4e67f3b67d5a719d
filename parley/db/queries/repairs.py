"""What the dispatcher's repair pass looks for: conversations owed a start, a resume, a look,
an ending or a wake, and the claim that keeps two repairers apart."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Conversation
from parley.db.queries.messages import unconsumed
from parley.vocabulary import LIVE, TERMINAL, Status


def repair_due(now: datetime) -> Any:
    return Conversation.repair_after.is_(None) | (Conversation.repair_after <= now)


def _not_just_handed_over(stale_before: datetime) -> Any:
    return Conversation.handed_over_at.is_(None) | (Conversation.handed_over_at < stale_before)


def _has_unread() -> Any:
    return exists().where(unconsumed(Conversation.id))


def owed_a_start(now: datetime, grace: timedelta) -> Any:
    """Stored, but no flow run was created: the webhook gets ``grace`` to do it first. Not a
    lead import's: those wait for ``owed_a_paced_start``."""
    return (
        (Conversation.status == Status.PENDING)
        & Conversation.flow_run_id.is_(None)
        & Conversation.import_id.is_(None)
        & (Conversation.created_at < now - grace)
        & _not_just_handed_over(now - grace)
    )


def owed_a_paced_start(now: datetime, lease: timedelta) -> Any:
    """A lead import's conversation whose first run nobody creates but the dispatcher, at
    the configured pace (oldest first: ``claim_for_repair`` orders by id)."""
    return (
        (Conversation.status == Status.PENDING)
        & Conversation.flow_run_id.is_(None)
        & Conversation.import_id.is_not(None)
        & _not_just_handed_over(now - lease)
    )


def owed_a_resume(now: datetime, lease: timedelta) -> Any:
    """Suspended for a lease although a message waits: a resume was lost or never got through.
    Not sooner: right after marking itself suspended the run is alive, about to pause, and the
    webhook's own resume is retrying — a repair then would fight the live run."""
    return (
        (Conversation.status == Status.SUSPENDED)
        & Conversation.flow_run_id.is_not(None)
        & (Conversation.updated_at < now - lease)
        & _has_unread()
        & _not_just_handed_over(now - lease)
    )


def owed_a_look(now: datetime, lease: timedelta) -> Any:
    """Suspended, and an operator resumed it, completed its task or signalled it."""
    return (
        (Conversation.status == Status.SUSPENDED)
        & Conversation.flow_run_id.is_not(None)
        & Conversation.wake_requested_at.is_not(None)
        & _not_just_handed_over(now - lease)
    )


def owed_an_ending(now: datetime, lease: timedelta) -> Any:
    """Ended from outside while its run was suspended: the run is resumed to finish."""
    return (
        Conversation.status.in_(list(TERMINAL))
        & Conversation.flow_run_id.is_not(None)
        & Conversation.wake_requested_at.is_not(None)
        & _not_just_handed_over(now - lease)
    )


async def paced_starts_in_flight(session: AsyncSession) -> int:
    """Imported conversations whose run was created but has not taken them over yet: runs
    Prefect and the worker still owe a start."""
    stmt = select(func.count()).where(
        (Conversation.status == Status.PENDING)
        & Conversation.import_id.is_not(None)
        & Conversation.flow_run_id.is_not(None)
    )
    return int(await session.scalar(stmt) or 0)


def owed_a_wake(clock_now: datetime, now: datetime, lease: timedelta) -> Any:
    """Suspended on a timer whose time has come (on the driven clock): resume it. The handover
    stamp keeps two dispatchers — or two ticks — from waking it twice within a lease."""
    return (
        (Conversation.status == Status.SUSPENDED)
        & Conversation.flow_run_id.is_not(None)
        & Conversation.wake_at.is_not(None)
        & (Conversation.wake_at <= clock_now)
        & _not_just_handed_over(now - lease)
    )


def lost_its_process(now: datetime, lease: timedelta) -> Any:
    """Nobody renewed the lease of a live run, or a run handed over (started, resumed,
    rescheduled) a lease ago never took the conversation over: its process is gone."""
    expired_lease = Conversation.status.in_(LIVE) & (Conversation.lease_until < now)
    never_taken = (Conversation.status == Status.PENDING) & Conversation.flow_run_id.is_not(None)
    return (expired_lease | never_taken) & _not_just_handed_over(now - lease)


def still_without_a_process(row: Conversation, flow_run_id: str, now: datetime) -> bool:
    """The row, read again under its lock just before a recovery acts: still this run's, and
    still nobody's — not taken over since it was claimed (a worker that started the run late,
    under load, has renewed the lease or suspended the row meanwhile)."""
    if row.flow_run_id != flow_run_id:
        return False
    if row.status is Status.PENDING:
        return True
    return row.status in LIVE and (row.lease_until is None or row.lease_until < now)


def had_its_chance_to_pause(
    row: Conversation, flow_run_id: str, now: datetime, lease: timedelta
) -> bool:
    """The row, read again under its lock before a resume, wake or look repair reschedules a
    run Prefect still calls pending or running: still this run's, still suspended, and marked
    so a lease ago. Sooner, the run is alive between marking itself suspended and pausing;
    rescheduling it would make its suspend fail (the guard ``owed_a_resume`` has at claim
    time, here for every kind, and against a run that suspended again since the claim)."""
    return (
        row.flow_run_id == flow_run_id
        and row.status is Status.SUSPENDED
        and row.updated_at < now - lease
    )


async def claim_for_repair(
    session: AsyncSession, condition: Any, now: datetime, limit: int
) -> list[Conversation]:
    """Claim rows that need ``condition``'s repair: lock them (skipping rows another
    transaction holds — a live run renewing its lease, another dispatcher) and re-check; the
    caller stamps them (``row.claimed_for_repair``) so no other dispatcher takes them for a
    lease. Rows in backoff wait."""
    stmt = (
        select(Conversation)
        .where(condition, repair_due(now))
        # New work first: rows never handed over, then the longest waiting; rows that keep
        # needing repair cannot fill the batch ahead of a healthy conversation's wake-up.
        .order_by(
            Conversation.repair_after.is_not(None),
            Conversation.handed_over_at.is_not(None),
            Conversation.handed_over_at,
            Conversation.id,
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(stmt)).scalars())
