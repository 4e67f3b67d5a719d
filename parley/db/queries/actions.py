"""The per-identity outreach action queue: enqueue, claim with SKIP LOCKED, finish, park,
put off, and the send history the limits read; and which queue an identity's action waits in,
as its row says (both wings ask: the hand-off of a new action, the dispatcher's claim)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    Table,
    Text,
    bindparam,
    cast,
    exists,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db.models import Action, Identity, utcnow
from parley.db.notifications import ACTIONS_CHANNEL
from parley.db.queries._common import dialect_of, get_row, insert_ignoring_conflict, rowcount
from parley.errors import NotFound
from parley.vocabulary import CREDITS, PARKED_TYPES, step_ref


async def enqueue_action(session: AsyncSession, values: dict[str, Any]) -> Action:
    """Insert once per idempotency key; enqueuing the same key again returns the first."""
    await insert_ignoring_conflict(session, Action, values, ("idempotency_key",))
    stmt = select(Action).where(Action.idempotency_key == values["idempotency_key"])
    return (await session.execute(stmt)).scalar_one()


async def notify_action_ready(session: AsyncSession, identity_id: int) -> None:
    """Delivered at commit (never for a rolled-back enqueue): wakes a dispatcher waiting for
    its next tick (parley.action_signal). Nothing to do on SQLite: the tick finds it."""
    if dialect_of(session) == "postgresql":
        await session.execute(select(func.pg_notify(ACTIONS_CHANNEL, str(identity_id))))


def channel_queue(identity: Identity, channel: str) -> str:
    """The queue a channel's actions wait in while the identity's account on it cannot work:
    ``email-{mailbox}`` (a LinkedIn seat's fallback mailbox is ``settings.email.address``),
    else the channel's name."""
    if channel == "email":
        nested = identity.settings.get("email")
        mailbox = nested.get("address") if isinstance(nested, dict) else None
        return f"email-{mailbox or identity.address}"
    return channel


def parked_queue_of(identity: Identity, channel: str, action_type: str) -> str | None:
    """The parked queue an action of this type must wait in now, or None when it may be
    tried: its channel's queue while that is parked (the session is known to be expired), else
    ``credits`` for an InMail while credits are out."""
    parked = identity.parked or {}
    queue = channel_queue(identity, channel)
    if queue in parked:
        return queue
    if action_type in PARKED_TYPES[CREDITS] and CREDITS in parked:
        return CREDITS
    return None


def parked_reason(identity: Identity | None, queue: str) -> str:
    entry = (identity.parked if identity is not None else {}).get(queue) or {}
    why = entry.get("reason") if isinstance(entry, dict) else None
    return f"parked: {queue!r} is parked ({why or 'no reason recorded'})"


def _ready(now: datetime | BindParameter[Any], actions: Any = Action) -> Any:
    return (actions.status == "queued") & (actions.queue == "ready") & (actions.not_before <= now)


async def identities_with_due_actions(
    session: AsyncSession, now: datetime, limit: int
) -> list[int]:
    stmt = (
        select(Action.identity_id)
        .where(_ready(now))
        .group_by(Action.identity_id)
        .order_by(func.min(Action.not_before))
        .limit(limit)
    )
    return [int(identity_id) for identity_id in (await session.execute(stmt)).scalars()]


_actions: Table = Action.__table__  # type: ignore[assignment]  # a Table, typed FromClause


def bound_param(name: str, column: str) -> BindParameter[Any]:
    """A named parameter typed as ``actions.<column>`` (its UTC handling for datetimes)."""
    return bindparam(name, type_=_actions.c[column].type)


_CLAIMED_COLUMNS = (
    _actions.c.id,
    _actions.c.type,
    _actions.c.channel,
    _actions.c.payload,
    _actions.c.attempts,
    _actions.c.conversation_id,
    _actions.c.seen_inbound_id,
    _actions.c.idempotency_key,
)


def _claim_next_statement(dialect: str) -> Any:
    """On SQLite the ``more`` check is left out (always true: the drain's next claim finds
    out): SQLAlchemy renders RETURNING's columns unqualified there, subqueries included,
    which turned ``other.id != actions.id`` into ``id != id``."""
    due = (
        select(_actions.c.id)
        .where(_actions.c.identity_id == bindparam("whose"))
        .where(_ready(bound_param("now", "not_before"), _actions.c))
        .order_by(_actions.c.not_before, _actions.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    other = _actions.alias("other")
    more = (
        exists()
        .where(other.c.identity_id == bindparam("whose"))
        .where(_ready(bound_param("now", "not_before"), other.c))
        .where(other.c.id != _actions.c.id)
        .label("more")
        if dialect == "postgresql"
        else literal(True).label("more")
    )
    return (
        update(_actions)
        .where(_actions.c.id == due)
        .values(
            status="running",
            claimed_at=bound_param("claim_at", "claimed_at"),
            claim=bindparam("stamp"),
            attempts=_actions.c.attempts + 1,
            put_off=False,
        )
        .returning(*_CLAIMED_COLUMNS, more)
    )


# The dispatcher's statements are built once: constructing them per call cost more than
# running them (column collections, operators, aliases), and a prebuilt statement's compiled
# form is found in the cache at once.
_CLAIM_NEXT = {dialect: _claim_next_statement(dialect) for dialect in ("postgresql", "sqlite")}


_UNCLAIM = (
    update(_actions)
    .where(_actions.c.id == bindparam("which"))
    .values(
        status="queued",
        not_before=bound_param("until", "not_before"),
        put_off=True,
        reason=bound_param("why", "reason"),
        attempts=_actions.c.attempts - 1,
        updated_at=bound_param("at", "updated_at"),
    )
)


UNSETTLED = ("running", "uncertain")


_FINISH = (
    update(_actions)
    .where(_actions.c.id == bindparam("which"))
    .where(_actions.c.claim == bindparam("stamp"), _actions.c.status.in_(UNSETTLED))
    .values(
        status="done",
        outcome=bound_param("how", "outcome"),
        reason=bound_param("why", "reason"),
        provider_id=bound_param("provider_ref", "provider_id"),
        performed_at=func.coalesce(
            bound_param("performed", "performed_at"), _actions.c.performed_at
        ),
        updated_at=bound_param("at", "updated_at"),
    )
)


async def claim_next_action(
    session: AsyncSession, identity_id: int, now: datetime, claim: str
) -> Any:
    """Take the identity's next due action — ``running``, one more attempt, stamped with
    ``claim`` — in one statement, or None; its ``more`` says whether another one was due
    beside it. ``SKIP LOCKED``: two dispatcher runs (or hosts) never take the same one; on
    SQLite the write lock makes a single taker anyway. A Core statement, not the ORM: the
    dispatcher runs it for every action (``unclaim_action`` undoes it when it must wait)."""
    params = {"whose": identity_id, "now": now, "claim_at": utcnow(), "stamp": claim}
    return (await session.execute(_CLAIM_NEXT[dialect_of(session)], params)).one_or_none()


async def unclaim_action(
    session: AsyncSession, action_id: int, not_before: datetime, reason: str
) -> None:
    """A claimed action that may not go yet: queued again until ``not_before``, the attempt
    not counted, marked ``put_off`` so a policy change re-decides it (``redecide_put_off``)."""
    params = {"which": action_id, "until": not_before, "why": reason, "at": utcnow()}
    await session.execute(_UNCLAIM, params)


async def finish_action(
    session: AsyncSession,
    action_id: int,
    *,
    outcome: str,
    reason: str | None,
    provider_id: str | None,
    performed_at: datetime | None,
    claim: str | None,
) -> bool:
    """Record how an action ended (``done``); one statement, the row locked by the update.
    False, and nothing written, unless the action is still under ``claim``: an outcome from
    a claim that recovery has since handed to another dispatcher (or that a status callback
    already settled) must not overwrite what came after it."""
    params = {
        "which": action_id,
        "stamp": claim,
        "how": outcome,
        "why": reason,
        "provider_ref": provider_id,
        "performed": performed_at,
        "at": utcnow(),
    }
    return rowcount(await session.execute(_FINISH, params)) == 1


async def stale_running_actions(session: AsyncSession, claimed_before: datetime) -> list[Action]:
    """Actions claimed by a dispatcher that died before recording their outcome (or whose
    call is still in flight, slower than the threshold: their claim stamp tells them apart
    from a later claim, and ``settle_claimed`` writes only under the stamp it saw)."""
    stmt = (
        select(Action)
        .where(Action.status == "running", Action.claimed_at < claimed_before)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(stmt)).scalars())


async def uncertain_actions_due(session: AsyncSession, now: datetime) -> list[Action]:
    """Uncertain actions whose wait for the provider's status callback is over."""
    stmt = (
        select(Action)
        .where(Action.status == "uncertain", Action.not_before <= now)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(stmt)).scalars())


async def settle_claimed(
    session: AsyncSession, action_id: int, claim: str | None, values: dict[str, Any]
) -> bool:
    """Write ``values`` on the action only while it is still under ``claim`` (running or
    uncertain): the compare-and-set that fences recovery and late outcomes."""
    stmt = (
        update(Action)
        .where(Action.id == action_id, Action.status.in_(UNSETTLED))
        .where(Action.claim.is_(None) if claim is None else Action.claim == claim)
        .values(**values, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return rowcount(await session.execute(stmt)) == 1


async def lock_action_by_key(session: AsyncSession, idempotency_key: str) -> Action | None:
    """The action whose idempotency key a provider echoed back (WhatsApp's
    ``biz_opaque_callback_data``, the client_ref inside an email's Message-ID), locked."""
    stmt = (
        select(Action)
        .where(Action.idempotency_key == idempotency_key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def lock_action(session: AsyncSession, action_id: int) -> Action:
    stmt = (
        select(Action)
        .where(Action.id == action_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"action {action_id} does not exist")
    return row


async def park_actions(
    session: AsyncSession,
    identity_id: int,
    channel: str,
    queue: str,
    now: datetime,
    *,
    types: Sequence[str] | None = None,
) -> int:
    """Every queued action of the identity on ``channel`` (of these ``types`` only, when
    given) waits in ``queue`` (parked)."""
    stmt = (
        update(Action)
        .where(Action.identity_id == identity_id, Action.channel == channel)
        .where(Action.status == "queued", Action.queue == "ready")
        .values(queue=queue, updated_at=now)
    )
    if types is not None:
        stmt = stmt.where(Action.type.in_(list(types)))
    return rowcount(await session.execute(stmt))


async def requeue_untried(session: AsyncSession, action_id: int, queue: str, reason: str) -> None:
    """A claimed action back to ``queued`` in ``queue``, untried, with its key and its place
    (``not_before``); the attempt is not counted. A parked queue (the account went down between
    the enqueue and the claim) or ``paused`` (its conversation is held at the pause gate)."""
    stmt = (
        update(Action)
        .where(Action.id == action_id)
        .values(
            status="queued",
            queue=queue,
            reason=reason,
            attempts=Action.attempts - 1,
            updated_at=utcnow(),
        )
    )
    await session.execute(stmt)


async def put_off_actions_to(
    session: AsyncSession, identity_id: int, channel: str, to: str, until: datetime, reason: str
) -> int:
    """The identity's queued actions on ``channel`` to the recipient ``to`` wait at least
    until ``until`` (a provider paces that pair)."""
    stmt = (
        update(Action)
        .where(Action.identity_id == identity_id, Action.channel == channel)
        .where(Action.status == "queued", Action.payload["to"].as_string() == to)
        .where(Action.not_before < until)
        .values(not_before=until, reason=reason, updated_at=utcnow())
    )
    return rowcount(await session.execute(stmt))


async def identities_with_parked_queues(session: AsyncSession) -> list[tuple[int, dict[str, Any]]]:
    """(id, parked) of every identity with a parked queue; ``parked`` is stored as JSON text
    (``{}`` when nothing is parked), so the others are left out without reading them."""
    stmt = (
        select(Identity.id, Identity.parked)
        .where(cast(Identity.parked, Text) != "{}")
        .order_by(Identity.id)
    )
    rows = (await session.execute(stmt)).all()
    return [(int(row[0]), dict(row[1] or {})) for row in rows if row[1]]


async def hold_ready_actions(
    session: AsyncSession, conversation_id: int, queue: str, reason: str
) -> int:
    """The conversation's ready actions into ``queue``, where no dispatcher claims them."""
    stmt = (
        update(Action)
        .where(Action.conversation_id == conversation_id, Action.queue == "ready")
        .where(Action.status == "queued")
        .values(queue=queue, reason=reason, updated_at=utcnow())
    )
    return rowcount(await session.execute(stmt))


async def held_actions(session: AsyncSession, conversation_id: int, queue: str) -> list[Action]:
    """The conversation's actions held in ``queue``, locked, oldest first."""
    stmt = (
        select(Action)
        .where(Action.conversation_id == conversation_id, Action.queue == queue)
        .where(Action.status == "queued")
        .order_by(Action.not_before, Action.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(stmt)).scalars())


async def get_action(session: AsyncSession, action_id: int) -> Action:
    return await get_row(session, Action, action_id, "action")


async def actions_of_conversation(session: AsyncSession, conversation_id: int) -> list[Action]:
    stmt = select(Action).where(Action.conversation_id == conversation_id).order_by(Action.id)
    return list((await session.execute(stmt)).scalars())


async def lock_action_of_step(
    session: AsyncSession, conversation_id: int, step: int
) -> Action | None:
    """The action the conversation's step ``step`` queued, locked (found by its key, the
    step's reference: a unique index, no scan of the conversation's actions)."""
    stmt = (
        select(Action)
        .where(Action.idempotency_key == step_ref(conversation_id, step))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def queued_action_counts(
    session: AsyncSession, identity_id: int | None = None
) -> dict[tuple[int, str], int]:
    """Queued actions per (identity, queue): ``ready`` and each parked queue."""
    stmt = (
        select(Action.identity_id, Action.queue, func.count())
        .where(Action.status == "queued")
        .group_by(Action.identity_id, Action.queue)
    )
    if identity_id is not None:
        stmt = stmt.where(Action.identity_id == identity_id)
    rows = (await session.execute(stmt)).all()
    return {(row[0], row[1]): int(row[2]) for row in rows}


async def uncertain_action_count(session: AsyncSession, identity_id: int) -> int:
    """Actions whose provider call may have happened, waiting for the provider's callback."""
    stmt = select(func.count()).where(
        Action.identity_id == identity_id, Action.status == "uncertain"
    )
    return int((await session.execute(stmt)).scalar_one())


async def next_ready_action(session: AsyncSession, identity_id: int) -> Action | None:
    """The action the identity's dispatcher takes next: ready, earliest ``not_before``."""
    stmt = (
        select(Action)
        .where(Action.identity_id == identity_id, Action.status == "queued")
        .where(Action.queue == "ready")
        .order_by(Action.not_before, Action.id)
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def sent_history(
    session: AsyncSession, identity_id: int, since: datetime
) -> list[tuple[str, datetime]]:
    """(type, performed_at) of the identity's sent actions from ``since`` on: what limits
    count."""
    rows = await session.execute(_SENT_HISTORY, {"identity_id": identity_id, "since": since})
    return [(kind, at) for kind, at in rows.all() if at is not None]


_SENT_HISTORY = (
    select(_actions.c.type, _actions.c.performed_at)
    .where(_actions.c.identity_id == bindparam("identity_id"), _actions.c.outcome == "sent")
    .where(_actions.c.performed_at.is_not(None))
    .where(_actions.c.performed_at >= bound_param("since", "performed_at"))
    .order_by(_actions.c.performed_at)
)


async def sent_history_of_type(
    session: AsyncSession, identity_id: int, action_type: str, since: datetime
) -> list[datetime]:
    """When the identity performed ``action_type`` from ``since`` on: what one decision counts
    (``ix_actions_history`` serves it), however far back the policy's caps reach."""
    params = {"identity_id": identity_id, "kind": action_type, "since": since}
    rows = await session.execute(_SENT_HISTORY_OF_TYPE, params)
    return [at for (at,) in rows.all() if at is not None]


_SENT_HISTORY_OF_TYPE = (
    select(_actions.c.performed_at)
    .where(_actions.c.identity_id == bindparam("identity_id"))
    .where(_actions.c.type == bindparam("kind"), _actions.c.outcome == "sent")
    .where(_actions.c.performed_at >= bound_param("since", "performed_at"))
    .order_by(_actions.c.performed_at)
)


async def redecide_put_off(session: AsyncSession, identity_id: int, now: datetime) -> int:
    """The identity's ready actions the dispatcher put off until later become due again, at
    the head of its queue in their order (their ``not_before`` becomes the queue's earliest,
    so the tie goes by id), for the dispatcher to decide under a new policy: each goes now or
    is put off again. An error's wait (a retry's backoff, ``put_off`` false) keeps its time,
    and a provider's block lives on the identity (``blocked_until``), which the decision
    reads. Returns how many became due."""
    ready = (
        (Action.identity_id == identity_id)
        & (Action.status == "queued")
        & (Action.queue == "ready")
    )
    earliest = await session.scalar(select(func.min(Action.not_before)).where(ready))
    if earliest is None:
        return 0
    stmt = (
        update(Action)
        .where(ready, Action.put_off.is_(True), Action.not_before > now)
        .values(
            not_before=min(earliest, now),
            put_off=False,
            reason="to be decided again: the identity's policy changed",
            updated_at=utcnow(),
        )
    )
    return rowcount(await session.execute(stmt))


async def unpark_queue(session: AsyncSession, identity_id: int, queue: str, now: datetime) -> int:
    """Move a parked queue's actions back to ``ready``; they keep their ``not_before`` and
    ids, so the dispatcher takes them in their original order. Returns how many moved."""
    stmt = (
        update(Action)
        .where(Action.identity_id == identity_id, Action.queue == queue)
        .where(Action.status == "queued")
        .values(queue="ready", updated_at=now)
    )
    return rowcount(await session.execute(stmt))


"""An action under a claim: being performed, or waiting for the provider to say whether it was."""
