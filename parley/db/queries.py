"""Every query Parley runs. Callers pass a session inside ``Database.transaction()``.

Row locks: ``lock_conversation`` is ``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the
transaction already holds the database write lock (``BEGIN IMMEDIATE``), which is stronger.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

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
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley.action_signal import CHANNEL as ACTIONS_CHANNEL
from parley.channels.base import DELIVERY_RANK, DeliveryStatus
from parley.db.models import (
    Action,
    Base,
    CampaignHold,
    CampaignVersion,
    Contact,
    Conversation,
    Direction,
    Identity,
    InboundStatus,
    Message,
    NodeVisit,
    WebhookEvent,
    utcnow,
)
from parley.errors import NotFound
from parley.inbox_signal import CHANNEL as INBOX_CHANNEL
from parley.state_machine import ACTIVE, LIVE, TERMINAL, Status, step_ref

_Row = TypeVar("_Row", bound=Base)
# Our own claim states: set on purpose by the outbox, never taken from a provider callback.
_CLAIM_STATUSES = frozenset({DeliveryStatus.PENDING, DeliveryStatus.SENDING})


def _dialect(session: AsyncSession) -> str:
    assert session.bind is not None, "sessions are always bound to an engine"
    return session.bind.dialect.name


def _insert(session: AsyncSession, model: Any) -> Any:
    return (postgresql.insert if _dialect(session) == "postgresql" else sqlite.insert)(model)


async def _insert_ignoring_conflict(
    session: AsyncSession, model: Any, values: dict[str, Any], conflict_on: Sequence[str]
) -> None:
    stmt = (
        _insert(session, model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=list(conflict_on))
    )
    await session.execute(stmt)


# --- identities, contacts, campaigns ---------------------------------------------------------


async def ensure_identity(session: AsyncSession, channel: str, address: str) -> Identity:
    await _insert_ignoring_conflict(
        session,
        Identity,
        {"channel": channel, "address": address, "created_at": utcnow()},
        ("channel", "address"),
    )
    stmt = select(Identity).where(Identity.channel == channel, Identity.address == address)
    return (await session.execute(stmt)).scalar_one()


async def ensure_contact(
    session: AsyncSession, channel: str, address: str, name: str | None
) -> Contact:
    await _insert_ignoring_conflict(
        session,
        Contact,
        {"channel": channel, "address": address, "name": name, "created_at": utcnow()},
        ("channel", "address"),
    )
    stmt = select(Contact).where(Contact.channel == channel, Contact.address == address)
    contact = (await session.execute(stmt)).scalar_one()
    if name and contact.name != name:
        contact.name = name
    return contact


async def ensure_campaign_version(
    session: AsyncSession, name: str, digest: str, source: str
) -> CampaignVersion:
    """Store a campaign's source once per distinct content; a new digest is a new version."""
    stmt = select(CampaignVersion).where(
        CampaignVersion.name == name, CampaignVersion.digest == digest
    )
    found = (await session.execute(stmt)).scalar_one_or_none()
    if found is not None:
        return found
    latest = await session.scalar(
        select(func.max(CampaignVersion.version)).where(CampaignVersion.name == name)
    )
    row = CampaignVersion(name=name, version=(latest or 0) + 1, digest=digest, source=source)
    session.add(row)
    await session.flush()
    return row


async def latest_campaign_version(session: AsyncSession, name: str) -> CampaignVersion:
    stmt = (
        select(CampaignVersion)
        .where(CampaignVersion.name == name)
        .order_by(CampaignVersion.version.desc())
        .limit(1)
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"campaign {name!r} is not loaded")
    return row


async def _get(session: AsyncSession, model: type[_Row], key: int, what: str) -> _Row:
    row = await session.get(model, key)
    if row is None:
        raise NotFound(f"{what} {key} does not exist")
    return row


async def get_campaign_version(session: AsyncSession, version_id: int) -> CampaignVersion:
    return await _get(session, CampaignVersion, version_id, "campaign version")


# --- conversations ---------------------------------------------------------------------------


async def lock_conversation(session: AsyncSession, conversation_id: int) -> Conversation:
    stmt = (
        select(Conversation)
        .where(Conversation.id == conversation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"conversation {conversation_id} does not exist")
    return row


async def get_conversation(session: AsyncSession, conversation_id: int) -> Conversation:
    return await _get(session, Conversation, conversation_id, "conversation")


async def lock_active_conversation(
    session: AsyncSession, identity_id: int, contact_id: int
) -> Conversation | None:
    stmt = (
        select(Conversation)
        .where(
            Conversation.identity_id == identity_id,
            Conversation.contact_id == contact_id,
            Conversation.status.in_(ACTIVE),
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def create_conversation(
    session: AsyncSession,
    identity_id: int,
    contact_id: int,
    campaign: CampaignVersion,
    start_node: str,
) -> tuple[Conversation, bool]:
    """Signal-with-start, second half: the caller found no active conversation of the pair
    under lock; create one (created=True), or take the one a concurrent webhook just made."""
    row = Conversation(
        identity_id=identity_id,
        contact_id=contact_id,
        campaign_version_id=campaign.id,
        status=Status.PENDING,
        current_node=start_node,
        variables={},
    )
    try:
        async with session.begin_nested():
            session.add(row)
            await session.flush()
    except IntegrityError:
        # A concurrent webhook created it first (PostgreSQL); take theirs.
        found = await lock_active_conversation(session, identity_id, contact_id)
        if found is None:
            raise
        return found, False
    return row, True


def touch(conversation: Conversation) -> None:
    conversation.updated_at = utcnow()


def _with_contact_and_campaign() -> Any:
    return (
        select(Conversation, Contact, CampaignVersion)
        .join(Contact, Contact.id == Conversation.contact_id)
        .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
    )


async def conversation_with_context(
    session: AsyncSession, conversation_id: int
) -> tuple[Conversation, Contact, CampaignVersion]:
    """A conversation, the contact it talks to and the campaign version it runs, in one query."""
    stmt = _with_contact_and_campaign().where(Conversation.id == conversation_id)
    row = (await session.execute(stmt)).one_or_none()
    if row is None:
        raise NotFound(f"conversation {conversation_id} does not exist")
    conv, contact, campaign = row
    return conv, contact, campaign


async def list_conversations(
    session: AsyncSession, *, limit: int = 100, status: Status | None = None
) -> list[tuple[Conversation, Contact, CampaignVersion]]:
    stmt = _with_contact_and_campaign().order_by(Conversation.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(Conversation.status == status)
    return [(c, ct, cv) for c, ct, cv in (await session.execute(stmt)).all()]


async def get_contact(session: AsyncSession, contact_id: int) -> Contact:
    return await _get(session, Contact, contact_id, "contact")


# --- the inbox -------------------------------------------------------------------------------


async def insert_inbound(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Store an inbound message once; ``None`` means the provider re-delivered a known id."""
    stmt = (
        _insert(session, Message)
        .values(
            direction=Direction.IN,
            status=InboundStatus.RECEIVED,
            created_at=utcnow(),
            updated_at=utcnow(),
            **values,
        )
        .on_conflict_do_nothing(index_elements=["provider_message_id"])
        .returning(Message.id)
    )
    message_id = (await session.execute(stmt)).scalar_one_or_none()
    if message_id is not None and _dialect(session) == "postgresql":
        # Delivered at commit: wakes a run waiting hot for this conversation (parley.inbox_signal).
        await session.execute(select(func.pg_notify(INBOX_CHANNEL, str(values["conversation_id"]))))
    return message_id


async def inbound_exists(session: AsyncSession, provider_message_id: str) -> bool:
    stmt = select(exists().where(Message.provider_message_id == provider_message_id))
    return bool(await session.scalar(stmt))


def _unconsumed(conversation_id: Any) -> Any:
    return (
        (Message.conversation_id == conversation_id)
        & (Message.direction == Direction.IN)
        & Message.consumed_step.is_(None)
    )


async def first_unconsumed_inbound(session: AsyncSession, conversation_id: int) -> Message | None:
    stmt = select(Message).where(_unconsumed(conversation_id)).order_by(Message.id).limit(1)
    return (await session.execute(stmt)).scalar_one_or_none()


async def unread_inbound(session: AsyncSession, conversation_id: int) -> list[Message]:
    stmt = select(Message).where(_unconsumed(conversation_id)).order_by(Message.id)
    return list((await session.execute(stmt)).scalars())


async def move_inbound(
    session: AsyncSession, messages: Sequence[Message], conversation_id: int, *, trigger_step: int
) -> None:
    """Re-file messages under another conversation; the first becomes its trigger."""
    for index, message in enumerate(messages):
        message.conversation_id = conversation_id
        message.consumed_step = trigger_step if index == 0 else None
        message.updated_at = utcnow()


async def has_unconsumed_inbound(session: AsyncSession, conversation_id: int) -> bool:
    return bool(await session.scalar(select(exists().where(_unconsumed(conversation_id)))))


async def mark_consumed(session: AsyncSession, message_id: int, step: int) -> None:
    await session.execute(
        update(Message)
        .where(Message.id == message_id)
        .values(consumed_step=step, status=InboundStatus.CONSUMED, updated_at=utcnow())
    )


async def last_heard_at(session: AsyncSession, conversation_id: int) -> datetime | None:
    """When the contact last wrote in this conversation (what an inactivity timeout counts
    from)."""
    stmt = select(func.max(Message.created_at)).where(
        Message.conversation_id == conversation_id, Message.direction == Direction.IN
    )
    value = await session.scalar(stmt)
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


# --- node visits: the step history and the funnel ---------------------------------------------


async def open_visit(
    session: AsyncSession, row: Conversation, node: str, entered_at: datetime
) -> None:
    session.add(
        NodeVisit(
            conversation_id=row.id,
            campaign_version_id=row.campaign_version_id,
            node=node,
            entered_at=entered_at,
        )
    )


async def current_visit(session: AsyncSession, conversation_id: int) -> NodeVisit | None:
    stmt = (
        select(NodeVisit)
        .where(NodeVisit.conversation_id == conversation_id, NodeVisit.left_at.is_(None))
        .order_by(NodeVisit.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def close_visit(
    session: AsyncSession,
    conversation_id: int,
    *,
    at: datetime,
    outcome: str,
    next_node: str | None = None,
    attempts: int = 0,
    error: str | None = None,
) -> None:
    visit = await current_visit(session, conversation_id)
    if visit is None:
        return
    visit.left_at, visit.outcome, visit.next_node = at, outcome, next_node
    visit.attempts = max(visit.attempts, attempts)
    if error is not None:
        visit.error = error[:2000]


async def visits_of(session: AsyncSession, conversation_id: int) -> list[NodeVisit]:
    stmt = select(NodeVisit).where(NodeVisit.conversation_id == conversation_id)
    return list((await session.execute(stmt.order_by(NodeVisit.id))).scalars())


# --- paused campaigns -------------------------------------------------------------------------


async def campaign_held(session: AsyncSession, campaign_version_id: int) -> bool:
    """Whether the campaign this version belongs to is paused (the runner's pause gate)."""
    stmt = select(
        exists().where(
            CampaignHold.name == CampaignVersion.name,
            CampaignVersion.id == campaign_version_id,
        )
    )
    return bool(await session.scalar(stmt))


async def hold_campaign(session: AsyncSession, name: str, reason: str | None) -> None:
    await _insert_ignoring_conflict(
        session, CampaignHold, {"name": name, "paused_at": utcnow(), "reason": reason}, ("name",)
    )


async def release_campaign(session: AsyncSession, name: str) -> bool:
    hold = await session.get(CampaignHold, name)
    if hold is None:
        return False
    await session.delete(hold)
    return True


async def campaign_versions_named(session: AsyncSession, name: str) -> list[CampaignVersion]:
    stmt = select(CampaignVersion).where(CampaignVersion.name == name)
    return list((await session.execute(stmt.order_by(CampaignVersion.version))).scalars())


async def conversation_ids_of_campaign(
    session: AsyncSession, name: str, statuses: Sequence[Status]
) -> list[int]:
    stmt = (
        select(Conversation.id)
        .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
        .where(CampaignVersion.name == name, Conversation.status.in_(list(statuses)))
        .order_by(Conversation.id)
    )
    return list((await session.execute(stmt)).scalars())


# --- outbound messages -----------------------------------------------------------------------


async def outbound_by_ref(session: AsyncSession, client_ref: str) -> Message | None:
    stmt = (
        select(Message)
        .where(Message.client_ref == client_ref)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def ensure_outbound_intent(
    session: AsyncSession,
    *,
    conversation_id: int,
    step: int,
    client_ref: str,
    text: str,
    payload: dict[str, Any],
) -> Message:
    """Record what we are about to send before sending it (docs/architecture.md, rule 4)."""
    await _insert_ignoring_conflict(
        session,
        Message,
        {
            "conversation_id": conversation_id,
            "direction": Direction.OUT,
            "client_ref": client_ref,
            "type": payload.get("type", "text"),
            "text": text,
            "payload": payload,
            "status": DeliveryStatus.PENDING,
            "step": step,
            "created_at": utcnow(),
            "updated_at": utcnow(),
        },
        ("client_ref",),
    )
    row = await outbound_by_ref(session, client_ref)
    assert row is not None
    return row


async def claim_for_sending(session: AsyncSession, client_ref: str, now: datetime) -> bool:
    """pending -> sending in one conditional UPDATE: of two executions, exactly one wins."""
    result = await session.execute(
        update(Message)
        .where(Message.client_ref == client_ref, Message.status == DeliveryStatus.PENDING)
        .values(status=DeliveryStatus.SENDING, claimed_at=now, updated_at=now)
    )
    return _rowcount(result) == 1


async def take_over_claim(
    session: AsyncSession, client_ref: str, observed: datetime | None, now: datetime
) -> bool:
    """Take over a ``sending`` claim nobody resolved, only if it is still the one observed."""
    condition = Message.claimed_at.is_(None) if observed is None else Message.claimed_at == observed
    result = await session.execute(
        update(Message)
        .where(
            Message.client_ref == client_ref, Message.status == DeliveryStatus.SENDING, condition
        )
        .values(claimed_at=now, updated_at=now)
    )
    return _rowcount(result) == 1


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def set_outbound_status(
    session: AsyncSession,
    message: Message,
    status: DeliveryStatus,
    *,
    provider_message_id: str | None = None,
    error: str | None = None,
) -> None:
    if provider_message_id and not message.provider_message_id:
        message.provider_message_id = provider_message_id
    current = DeliveryStatus(message.status)
    if status in _CLAIM_STATUSES or DELIVERY_RANK[status] > DELIVERY_RANK[current]:
        message.status = status
    if error:
        message.error = error
    message.updated_at = utcnow()


async def apply_delivery_status(
    session: AsyncSession,
    *,
    provider_message_id: str,
    client_ref: str | None,
    status: str,
    error: str | None,
) -> Message | None:
    """A provider status callback; matched by our client_ref first (it can arrive before the
    send call has returned), then by the provider's id."""
    message = await outbound_by_ref(session, client_ref) if client_ref else None
    if message is None:
        stmt = select(Message).where(
            Message.provider_message_id == provider_message_id, Message.direction == Direction.OUT
        )
        message = (await session.execute(stmt)).scalar_one_or_none()
    if message is None:
        return None
    if status not in DELIVERY_RANK or status in _CLAIM_STATUSES:
        return message  # a status we do not track (e.g. "deleted"): matched, nothing to change
    await set_outbound_status(
        session,
        message,
        DeliveryStatus(status),
        provider_message_id=provider_message_id,
        error=error,
    )
    return message


async def transcript(session: AsyncSession, conversation_id: int) -> list[Message]:
    stmt = select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
    return list((await session.execute(stmt)).scalars())


async def record_webhook_event(
    session: AsyncSession, provider: str, kind: str, payload: dict[str, Any]
) -> None:
    session.add(WebhookEvent(provider=provider, kind=kind, payload=payload))


async def count_webhook_events(session: AsyncSession, kind: str | None = None) -> int:
    stmt = select(func.count(WebhookEvent.id))
    if kind:
        stmt = stmt.where(WebhookEvent.kind == kind)
    return int(await session.scalar(stmt) or 0)


# --- the dispatcher's repairs ----------------------------------------------------------------


def repair_due(now: datetime) -> Any:
    return Conversation.repair_after.is_(None) | (Conversation.repair_after <= now)


def _not_just_handed_over(stale_before: datetime) -> Any:
    return Conversation.handed_over_at.is_(None) | (Conversation.handed_over_at < stale_before)


def _has_unread() -> Any:
    return exists().where(_unconsumed(Conversation.id))


def owed_a_start(now: datetime, grace: timedelta) -> Any:
    """Stored, but no flow run was created: the webhook gets ``grace`` to do it first."""
    return (
        (Conversation.status == Status.PENDING)
        & Conversation.flow_run_id.is_(None)
        & (Conversation.created_at < now - grace)
        & _not_just_handed_over(now - grace)
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
    transaction holds — a live run renewing its lease, another dispatcher), re-check, and stamp
    ``handed_over_at`` so no other dispatcher takes them for a lease. Rows in backoff wait."""
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
    rows = list((await session.execute(stmt)).scalars())
    for row in rows:
        row.handed_over_at = now
    return rows


async def lock_conversation_if_free(
    session: AsyncSession, conversation_id: int
) -> Conversation | None:
    """The row, locked, or None when another transaction holds it right now."""
    stmt = (
        select(Conversation)
        .where(Conversation.id == conversation_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def active_by_flow_run(
    session: AsyncSession, flow_run_ids: Sequence[str]
) -> list[Conversation]:
    if not flow_run_ids:
        return []
    stmt = select(Conversation).where(
        Conversation.flow_run_id.in_(list(flow_run_ids)), Conversation.status.in_(ACTIVE)
    )
    return list((await session.execute(stmt)).scalars())


async def drop_unsent(session: AsyncSession, conversation_id: int, reason: str) -> int:
    """An ended conversation's intents that never went out are dropped, never sent later."""
    result = await session.execute(
        update(Message)
        .where(
            Message.conversation_id == conversation_id,
            Message.direction == Direction.OUT,
            Message.status == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.DROPPED, error=reason[:2000], updated_at=utcnow())
    )
    return _rowcount(result)


# --- outreach actions: the per-identity queue ------------------------------------------------


async def enqueue_action(session: AsyncSession, values: dict[str, Any]) -> Action:
    """Insert once per idempotency key; enqueuing the same key again returns the first."""
    await _insert_ignoring_conflict(session, Action, values, ("idempotency_key",))
    stmt = select(Action).where(Action.idempotency_key == values["idempotency_key"])
    return (await session.execute(stmt)).scalar_one()


async def notify_action_ready(session: AsyncSession, identity_id: int) -> None:
    """Delivered at commit (never for a rolled-back enqueue): wakes a dispatcher waiting for
    its next tick (parley.action_signal). Nothing to do on SQLite: the tick finds it."""
    if _dialect(session) == "postgresql":
        await session.execute(select(func.pg_notify(ACTIONS_CHANNEL, str(identity_id))))


async def last_inbound_id(session: AsyncSession, conversation_id: int) -> int | None:
    stmt = select(func.max(Message.id)).where(
        Message.conversation_id == conversation_id, Message.direction == Direction.IN
    )
    value = await session.scalar(stmt)
    return None if value is None else int(value)


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


def _bound(name: str, column: str) -> BindParameter[Any]:
    """A named parameter typed as ``actions.<column>`` (its UTC handling for datetimes)."""
    return bindparam(name, type_=_actions.c[column].type)


def _claim_next_statement(dialect: str) -> Any:
    """On SQLite the ``more`` check is left out (always true: the drain's next claim finds
    out): SQLAlchemy renders RETURNING's columns unqualified there, subqueries included,
    which turned ``other.id != actions.id`` into ``id != id``."""
    due = (
        select(_actions.c.id)
        .where(_actions.c.identity_id == bindparam("whose"))
        .where(_ready(_bound("now", "not_before"), _actions.c))
        .order_by(_actions.c.not_before, _actions.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    other = _actions.alias("other")
    more = (
        exists()
        .where(other.c.identity_id == bindparam("whose"))
        .where(_ready(_bound("now", "not_before"), other.c))
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
            claimed_at=_bound("claim_at", "claimed_at"),
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
        not_before=_bound("until", "not_before"),
        put_off=True,
        reason=_bound("why", "reason"),
        attempts=_actions.c.attempts - 1,
        updated_at=_bound("at", "updated_at"),
    )
)
UNSETTLED = ("running", "uncertain")
"""An action under a claim: being performed, or waiting for the provider to say whether it was."""
_FINISH = (
    update(_actions)
    .where(_actions.c.id == bindparam("which"))
    .where(_actions.c.claim == bindparam("stamp"), _actions.c.status.in_(UNSETTLED))
    .values(
        status="done",
        outcome=_bound("how", "outcome"),
        reason=_bound("why", "reason"),
        provider_id=_bound("provider_ref", "provider_id"),
        performed_at=func.coalesce(_bound("performed", "performed_at"), _actions.c.performed_at),
        updated_at=_bound("at", "updated_at"),
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
    return (await session.execute(_CLAIM_NEXT[_dialect(session)], params)).one_or_none()


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
    return _rowcount(await session.execute(_FINISH, params)) == 1


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
    return _rowcount(await session.execute(stmt)) == 1


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
    return _rowcount(await session.execute(stmt))


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
    return _rowcount(await session.execute(stmt))


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
    return _rowcount(await session.execute(stmt))


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


async def inbound_after(session: AsyncSession, conversation_id: int, after_id: int | None) -> bool:
    condition = (Message.conversation_id == conversation_id) & (Message.direction == Direction.IN)
    if after_id is not None:
        condition = condition & (Message.id > after_id)
    return bool(await session.scalar(select(exists().where(condition))))


async def lock_active_conversation_that_sent(
    session: AsyncSession, provider_id: str
) -> Conversation | None:
    """The active conversation whose action (or message) the provider knows as ``provider_id``
    (an email's Message-ID), locked; None when it ended or was never ours."""
    by_action = select(Action.conversation_id).where(Action.provider_id == provider_id)
    by_message = select(Message.conversation_id).where(
        Message.provider_message_id == provider_id, Message.direction == Direction.OUT
    )
    stmt = (
        select(Conversation)
        .where(
            Conversation.id.in_(by_action.union(by_message)),
            Conversation.status.in_(ACTIVE),
        )
        .limit(1)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


# --- WhatsApp numbers: which identity a number belongs to ------------------------------------

WHATSAPP = "whatsapp"


def _own_whatsapp_number() -> Any:
    return Identity.settings["phone_number_id"].as_string()


def _nested_whatsapp_number() -> Any:
    return Identity.settings[(WHATSAPP, "phone_number_id")].as_string()


async def whatsapp_number_claimers(session: AsyncSession, number: str) -> list[Identity]:
    """The identities whose WhatsApp number is ``number``: a WhatsApp identity by its
    ``phone_number_id`` setting (else its address), any other (a LinkedIn seat, a mailbox) by
    ``whatsapp.phone_number_id``. WhatsApp identities first, then by id; more than one only
    in data older than the check that refuses it."""
    own = _own_whatsapp_number()
    is_whatsapp = Identity.channel == WHATSAPP
    stmt = (
        select(Identity)
        .where(
            (is_whatsapp & (own == number))
            | (is_whatsapp & (Identity.address == number) & own.is_(None))
            | ((Identity.channel != WHATSAPP) & (_nested_whatsapp_number() == number))
        )
        .order_by(Identity.channel != WHATSAPP, Identity.id)
    )
    return list((await session.scalars(stmt)).all())


async def lock_active_conversation_of_lead(
    session: AsyncSession,
    field: str,
    values: Sequence[str],
    *,
    identity_id: int | None = None,
    without_own_whatsapp_number: bool = False,
) -> Conversation | None:
    """The newest active conversation whose contact's ``fields[field]`` is one of ``values``
    (a LinkedIn lead's WhatsApp number), of identity ``identity_id``, or of every identity
    other than a WhatsApp one that has no WhatsApp number of its own (they send from the
    installation's); locked like ``lock_active_conversation``."""
    stmt = (
        select(Conversation)
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(Conversation.status.in_(ACTIVE), Contact.fields[field].as_string().in_(values))
        .order_by(Conversation.id.desc())
        .limit(1)
        .with_for_update(of=Conversation)
        .execution_options(populate_existing=True)
    )
    if identity_id is not None:
        stmt = stmt.where(Conversation.identity_id == identity_id)
    if without_own_whatsapp_number:
        stmt = stmt.join(Identity, Identity.id == Conversation.identity_id).where(
            Identity.channel != WHATSAPP, _nested_whatsapp_number().is_(None)
        )
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_action(session: AsyncSession, action_id: int) -> Action:
    return await _get(session, Action, action_id, "action")


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


# --- funnel and migration ---------------------------------------------------------------------
# What operators read about a campaign version as a whole (the funnel), the rows a migration
# moves, and the tail of a transcript (the Prefect artifact shows the last messages only).

_DROPPED_OUTCOMES = (Status.FAILED.value, Status.CANCELLED.value)
_NORMAL_OUTCOMES = ("left", Status.COMPLETED.value)


async def campaign_version_numbered(
    session: AsyncSession, name: str, version: int
) -> CampaignVersion:
    """The version row ``version`` of campaign ``name``; NotFound names which part is unknown."""
    stmt = select(CampaignVersion).where(
        CampaignVersion.name == name, CampaignVersion.version == version
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is not None:
        return row
    known = [v.version for v in await campaign_versions_named(session, name)]
    if not known:
        raise NotFound(f"campaign {name!r} does not exist")
    listed = ", ".join(str(v) for v in known)
    raise NotFound(f"campaign {name!r} has no version {version} (it has {listed})")


async def funnel_visit_counts(
    session: AsyncSession, campaign_version_id: int
) -> dict[str, tuple[int, int, int]]:
    """Per node of the version: conversations that reached it, conversations that ended there
    failed or cancelled, and visits that ended normally (by an edge, or completing there)."""
    conversations = func.count(func.distinct(NodeVisit.conversation_id))
    stmt = (
        select(
            NodeVisit.node,
            conversations,
            conversations.filter(NodeVisit.outcome.in_(_DROPPED_OUTCOMES)),
            func.count(NodeVisit.id).filter(NodeVisit.outcome.in_(_NORMAL_OUTCOMES)),
        )
        .where(NodeVisit.campaign_version_id == campaign_version_id)
        .group_by(NodeVisit.node)
    )
    rows = (await session.execute(stmt)).all()
    return {node: (int(reached), int(lost), int(done)) for node, reached, lost, done in rows}


async def funnel_waiting(session: AsyncSession, campaign_version_id: int) -> dict[str, int]:
    """Active conversations of the version, per node they are at now."""
    stmt = (
        select(Conversation.current_node, func.count(Conversation.id))
        .where(
            Conversation.campaign_version_id == campaign_version_id,
            Conversation.status.in_(list(ACTIVE)),
        )
        .group_by(Conversation.current_node)
    )
    return {node: int(count) for node, count in (await session.execute(stmt)).all()}


async def funnel_stays(
    session: AsyncSession, campaign_version_id: int
) -> list[tuple[str, datetime, datetime]]:
    """(node, entered_at, left_at) of every closed visit of the version: two timestamps per
    visit, so percentiles are computed the same way on SQLite (no percentile_cont) and
    PostgreSQL."""
    stmt = select(NodeVisit.node, NodeVisit.entered_at, NodeVisit.left_at).where(
        NodeVisit.campaign_version_id == campaign_version_id, NodeVisit.left_at.is_not(None)
    )
    rows = (await session.execute(stmt)).all()
    return [(node, entered, left) for node, entered, left in rows if left is not None]


async def lock_conversations_of_campaign(
    session: AsyncSession, name: str, statuses: Sequence[Status]
) -> list[Conversation]:
    """Every conversation of the campaign (any version) in ``statuses``, locked for update and
    in id order (the order every locker of several rows takes, so two never deadlock)."""
    stmt = (
        select(Conversation)
        .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
        .where(CampaignVersion.name == name, Conversation.status.in_(list(statuses)))
        .order_by(Conversation.id)
        .with_for_update(of=Conversation)
        .execution_options(populate_existing=True)
    )
    return list((await session.execute(stmt)).scalars())


async def transcript_tail(
    session: AsyncSession, conversation_id: int, limit: int
) -> tuple[list[Message], int]:
    """The last ``limit`` messages in order, and how many the conversation has in all."""
    total = await session.scalar(
        select(func.count(Message.id)).where(Message.conversation_id == conversation_id)
    )
    stmt = (
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.id.desc())
        .limit(limit)
    )
    newest_first = list((await session.execute(stmt)).scalars())
    return newest_first[::-1], int(total or 0)


async def active_ids_off_version(
    session: AsyncSession, name: str, campaign_version_id: int
) -> list[int]:
    """Active conversations of the campaign that run on another version than this one."""
    stmt = (
        select(Conversation.id)
        .join(CampaignVersion, CampaignVersion.id == Conversation.campaign_version_id)
        .where(
            CampaignVersion.name == name,
            Conversation.campaign_version_id != campaign_version_id,
            Conversation.status.in_(list(ACTIVE)),
        )
        .order_by(Conversation.id)
    )
    return list((await session.execute(stmt)).scalars())


async def visits_tail(
    session: AsyncSession, conversation_id: int, limit: int
) -> tuple[list[NodeVisit], int]:
    """The last ``limit`` node visits in order, and how many the conversation has in all."""
    total = await session.scalar(
        select(func.count(NodeVisit.id)).where(NodeVisit.conversation_id == conversation_id)
    )
    stmt = (
        select(NodeVisit)
        .where(NodeVisit.conversation_id == conversation_id)
        .order_by(NodeVisit.id.desc())
        .limit(limit)
    )
    newest_first = list((await session.execute(stmt)).scalars())
    return newest_first[::-1], int(total or 0)


# --- identities and their queue ---------------------------------------------------------------


async def get_identity(session: AsyncSession, identity_id: int) -> Identity:
    return await _get(session, Identity, identity_id, "identity")


async def lock_identity(session: AsyncSession, identity_id: int) -> Identity:
    """The identity row under ``FOR UPDATE`` on PostgreSQL: its ``parked`` map is changed by
    the dispatcher (park) and by operators (reconnect), never both at once."""
    params = {"identity_id": identity_id}
    row = (await session.execute(_LOCK_IDENTITY, params)).scalar_one_or_none()
    if row is None:
        raise NotFound(f"identity {identity_id} does not exist")
    return row


_LOCK_IDENTITY = select(Identity).where(Identity.id == bindparam("identity_id")).with_for_update()


async def find_identity(session: AsyncSession, channel: str, address: str) -> Identity | None:
    stmt = select(Identity).where(Identity.channel == channel, Identity.address == address)
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert_identity(session: AsyncSession, values: dict[str, Any]) -> Identity:
    """Insert; a duplicate (channel, address) raises ``IntegrityError`` at the flush."""
    row = Identity(**values)
    session.add(row)
    await session.flush()
    return row


async def all_identities(session: AsyncSession) -> list[Identity]:
    return list((await session.scalars(select(Identity).order_by(Identity.id))).all())


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
    .where(_actions.c.performed_at >= _bound("since", "performed_at"))
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
    .where(_actions.c.performed_at >= _bound("since", "performed_at"))
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
    return _rowcount(await session.execute(stmt))


async def unpark_queue(session: AsyncSession, identity_id: int, queue: str, now: datetime) -> int:
    """Move a parked queue's actions back to ``ready``; they keep their ``not_before`` and
    ids, so the dispatcher takes them in their original order. Returns how many moved."""
    stmt = (
        update(Action)
        .where(Action.identity_id == identity_id, Action.queue == queue)
        .where(Action.status == "queued")
        .values(queue="ready", updated_at=now)
    )
    return _rowcount(await session.execute(stmt))
