"""What operators do to conversations and campaigns from outside their runs.

Pause, resume, cancel, complete, retry, complete a task, signal; pause, resume, activate and
archive a campaign (its status: ``parley.campaign.status``).
Each is one status change checked against the state machine's table, written with optimistic
locking: the row is read without a lock and updated only if its ``version`` is still the one
read, so a command racing a live run's step retries on the fresh row and never overwrites the
step (``ConcurrentUpdate`` after a few lost races).

Nothing here talks to Prefect. A change that owes a run a resume stamps ``wake_requested_at``:
the REST API resumes the run at once, and the dispatcher does it within a tick for the CLI (or
when the API's attempt did not get through). A paused conversation holds no process: the run
stops at its next node (the pause gate, docs/campaigns.md) and suspends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from parley import suppression
from parley.campaign import Campaign, TaskNode, WaitNode
from parley.campaign import status as campaign_status
from parley.campaign.conditions import Comparison, fields_read
from parley.campaign.registry import campaign_of, start_node_of
from parley.campaign.status import Move
from parley.clock import Clock, SystemClock
from parley.conversation import handoff
from parley.conversation import row as conversation_row
from parley.conversation.executor import end_from_outside
from parley.db import Database, queries
from parley.db.models import Contact, Conversation, Identity
from parley.errors import (
    ConcurrentUpdate,
    InvalidInput,
    NotFound,
    Suppressed,
    TransitionNotAllowed,
)
from parley.vocabulary import ACTIVE, HELD_BY_CAMPAIGN, TERMINAL, CampaignStatus, Status

SignalKind = Literal["task_completed", "field_changed", "variables_changed"]
SIGNAL_KINDS: tuple[SignalKind, ...] = ("task_completed", "field_changed", "variables_changed")
RunAction = Literal["resume", "start", "end", "none"]
LOST_RACES = 5


@dataclass(frozen=True)
class Change:
    """A conversation after a command, and what its run is owed: ``resume`` (suspended, must
    look again), ``start`` (a retried conversation needs a new run), ``end`` (ended while its
    run was suspended: resume it so it finishes) or ``none``."""

    conversation_id: int
    status: Status
    run: RunAction
    flow_run_id: str | None
    detail: str


Mutation = Callable[[AsyncSession, Conversation], Awaitable[tuple[RunAction, str]]]


async def _change(db: Database, conversation_id: int, mutate: Mutation) -> Change:
    for _ in range(LOST_RACES):
        try:
            async with db.transaction() as session:
                row = await queries.conversations.get_conversation(session, conversation_id)
                run, detail = await mutate(session, row)
                if run != "none":
                    conversation_row.request_wake(row)
                conversation_row.touch(row)
                await session.flush()  # the version check happens here
                return Change(row.id, Status(row.status), run, row.flow_run_id, detail)
        except StaleDataError:
            continue  # a live run committed a step meanwhile: look at the fresh row
    raise ConcurrentUpdate(f"conversation {conversation_id} kept changing; try again")


def _sleeping(row: Conversation) -> bool:
    """No process holds the conversation: its run is suspended (or about to be)."""
    return row.lease_until is None


# --- conversations ----------------------------------------------------------------------------


async def start(
    db: Database,
    campaign_name: str,
    identity_id: int,
    *,
    channel: str,
    address: str,
    name: str | None = None,
    fields: Mapping[str, Any] | None = None,
    variables: Mapping[str, Any] | None = None,
) -> Change:
    """Start a business-initiated conversation (an outreach lead): the contact, with the
    fields its actions need (``email``, ``linkedin``), on the latest version of the campaign,
    sent from the identity. Refused if the contact already has an active conversation there."""
    async with db.transaction() as session:
        identity = await session.get(Identity, identity_id)
        if identity is None:
            raise NotFound(f"identity {identity_id} does not exist")
        version = await queries.campaigns.latest_campaign_version(session, campaign_name)
        await campaign_status.check_accepts_new_conversations(session, campaign_name)
        missing = [n for n in campaign_of(version).inputs if n not in (variables or {})]
        if missing:
            raise InvalidInput(f"campaign {campaign_name!r} needs its inputs: {', '.join(missing)}")
        contact = await queries.contacts.ensure_contact(session, channel, address, name)
        if fields:
            contact.fields = {**contact.fields, **fields}
        await _refuse_suppressed(session, identity.id, contact)
        active = await queries.conversations.lock_active_conversation(
            session, identity.id, contact.id
        )
        if active is not None:
            raise TransitionNotAllowed(
                f"{channel} contact {address} already has active conversation {active.id}"
            )
        row, _ = await queries.conversations.create_conversation(
            session, identity.id, contact.id, version, start_node_of(version)
        )
        conversation_row.give_inputs(row, variables or {})
        conversation_row.request_wake(row)
        return Change(row.id, Status(row.status), "start", None, f"started on {campaign_name}")


async def _refuse_suppressed(session: AsyncSession, identity_id: int, contact: Contact) -> None:
    """A lead on the do-not-contact list is never started: any of its addresses (the one it is
    started on, its email, phone and LinkedIn fields) suppressed for the identity or
    installation-wide refuses the start, and the transaction (the contact's new fields with it)
    is rolled back."""
    entry = await suppression.suppression_of(session, identity_id, contact)
    if entry is not None:
        scope = "installation-wide" if entry.identity_id is None else f"for identity {identity_id}"
        raise Suppressed(
            f"{entry.address} is on the do-not-contact list {scope} ({entry.reason}): "
            "the lead is not started"
        )


async def pause(db: Database, conversation_id: int) -> Change:
    async def mutate(session: AsyncSession, row: Conversation) -> tuple[RunAction, str]:
        already = row.status is Status.PAUSED
        conversation_row.pause(row, by="operator")  # outlives the campaign's resume
        if already:
            return "none", "already paused"
        return "none", f"paused at {row.current_node}: it stops before its next node"

    return await _change(db, conversation_id, mutate)


async def resume(db: Database, conversation_id: int) -> Change:
    async def mutate(session: AsyncSession, row: Conversation) -> tuple[RunAction, str]:
        if row.status is not Status.PAUSED:
            raise TransitionNotAllowed(
                f"conversation {row.id} is {row.status.value}, not paused: nothing to resume"
            )
        run = _release(row)
        return run, f"resumed at {row.current_node}" + await _actions_released(session, row)

    return await _change(db, conversation_id, mutate)


async def _actions_released(session: AsyncSession, row: Conversation) -> str:
    """The actions the dispatcher held while the conversation was paused go back in line (the
    same actions, same keys: performed once, in the identity's hours). The row's update is
    flushed first: it takes the row lock the dispatcher holds actions under."""
    await session.flush()
    released = await handoff.release_held(session, row.id)
    return f"; {released} held action(s) back in the queue" if released else ""


_OWED_AFTER_RELEASE: dict[Status, RunAction] = {
    Status.PENDING: "start",
    Status.SUSPENDED: "resume",
    Status.RUNNING: "none",
}


def _release(row: Conversation) -> RunAction:
    """Back to what it was before the pause: a conversation held before its first run started
    is pending again and its run is started; a sleeping one is resumed; a live one goes on."""
    return _OWED_AFTER_RELEASE[conversation_row.release(row)]


async def cancel(
    db: Database, conversation_id: int, reason: str, clock: Clock | None = None
) -> Change:
    return await _end_by_operator(
        db, conversation_id, Status.CANCELLED, reason, clock or SystemClock()
    )


async def complete(
    db: Database, conversation_id: int, reason: str, clock: Clock | None = None
) -> Change:
    return await _end_by_operator(
        db, conversation_id, Status.COMPLETED, reason, clock or SystemClock()
    )


async def _end_by_operator(
    db: Database, conversation_id: int, status: Status, reason: str, clock: Clock
) -> Change:
    """End it from outside: unsent messages are dropped, the run ends at its next boundary."""

    async def mutate(session: AsyncSession, row: Conversation) -> tuple[RunAction, str]:
        sleeping = _sleeping(row) and row.flow_run_id is not None
        await end_from_outside(session, row, status, reason, clock.now())
        return ("end" if sleeping else "none"), f"{status.value}: {reason}"

    return await _change(db, conversation_id, mutate)


async def retry(db: Database, conversation_id: int, clock: Clock | None = None) -> Change:
    """A failed conversation goes on from the node that failed, in a new flow run."""
    now = (clock or SystemClock()).now()

    async def mutate(session: AsyncSession, row: Conversation) -> tuple[RunAction, str]:
        conversation_row.retry(row, now)
        await queries.visits.open_visit(session, row, row.current_node, now)
        try:
            await session.flush()
        except IntegrityError:
            raise TransitionNotAllowed(
                f"conversation {row.id} cannot be retried: its contact already has an active "
                "conversation"
            ) from None
        return "start", f"retrying from {row.current_node}"

    return await _change(db, conversation_id, mutate)


# --- tasks and signals ------------------------------------------------------------------------


async def signal(db: Database, conversation_id: int, kind: str, data: Mapping[str, Any]) -> Change:
    """Update a conversation from outside without a new run. Its run is resumed only if the
    change can alter what it waits for: a task result at its task node, a contact field or a
    variable that the node's edges (or a wait's timezone) read."""
    if kind not in SIGNAL_KINDS:
        raise InvalidInput(f"unknown signal {kind!r}; known: {', '.join(SIGNAL_KINDS)}")

    async def mutate(session: AsyncSession, row: Conversation) -> tuple[RunAction, str]:
        if row.status in TERMINAL:
            raise TransitionNotAllowed(f"conversation {row.id} is {row.status.value}")
        version = await queries.campaigns.get_campaign_version(session, row.campaign_version_id)
        campaign = campaign_of(version)
        if kind == "task_completed":
            changes = _complete_task(campaign, row, data)
        elif kind == "field_changed":
            contact = await queries.contacts.get_contact(session, row.contact_id)
            contact.fields = {**contact.fields, **data}
            changes = _reads(campaign, row.current_node, fields=set(data))
        else:
            conversation_row.merge_variables(row, data)
            changes = _reads(campaign, row.current_node, variables=set(data))
        wake = changes and row.status is Status.SUSPENDED
        return ("resume" if wake else "none"), f"{kind} applied" + (
            "; its run looks again" if wake else "; what it waits for is unchanged"
        )

    return await _change(db, conversation_id, mutate)


async def complete_task(db: Database, conversation_id: int, result: Mapping[str, Any]) -> Change:
    return await signal(db, conversation_id, "task_completed", result)


def _complete_task(campaign: Campaign, row: Conversation, data: Mapping[str, Any]) -> bool:
    node = campaign.node(row.current_node)
    if not isinstance(node, TaskNode) or not row.node_done or row.task_result is not None:
        raise TransitionNotAllowed(
            f"conversation {row.id} has no open task (it is at {row.current_node!r})"
        )
    try:
        result = node.result_model().model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidInput(f"task {node.id!r} result: {exc.errors(include_url=False)}") from exc
    conversation_row.complete_task(row, node.var, result.model_dump(mode="json"))
    return True


def _reads(
    campaign: Campaign,
    node_id: str,
    *,
    fields: set[str] | None = None,
    variables: set[str] | None = None,
) -> bool:
    """Whether edges leaving the node compare any of these fields or variables, or (for a
    ``timezone`` field) the node waits until a local time."""
    node = campaign.node(node_id)
    if fields and "timezone" in fields and isinstance(node, WaitNode) and node.until:
        return True
    for edge in campaign.edges_from(node_id):
        if fields and fields_read(edge.when) & fields:
            return True  # a lead condition (connection_accepted, has_email, ...)
        if isinstance(edge.when, Comparison):
            source, name = edge.when.subject
            if (source == "field" and name in (fields or ())) or (
                source == "var" and name in (variables or ())
            ):
                return True
    return False


# --- campaigns --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignChange:
    name: str
    status: CampaignStatus
    changes: tuple[Change, ...]

    @property
    def paused(self) -> bool:
        return self.status is CampaignStatus.PAUSED


async def _move_campaign(
    session: AsyncSession, name: str, move: Move, reason: str | None = None
) -> tuple[CampaignStatus, CampaignStatus]:
    """The campaign's status before and after ``move``, checked and written under its lock."""
    await _known_campaign(session, name)
    before = campaign_status.status_of(await queries.campaigns.lock_campaign_state(session, name))
    after = campaign_status.next_status(name, before, move)
    if after is not before:  # a repeated move keeps the first one's time and reason
        await queries.campaigns.set_campaign_status(session, name, after, reason)
    return before, after


async def pause_campaign(db: Database, name: str, reason: str | None = None) -> CampaignChange:
    """Every conversation of the campaign stops at its next node: suspended ones are held at
    once (so neither a timer nor a message wakes them), live ones at their next step."""
    async with db.transaction() as session:
        await _move_campaign(session, name, "pause", reason)
        ids = await queries.conversations.conversation_ids_of_campaign(
            session, name, [Status.SUSPENDED, Status.PENDING]
        )
    changes = [await _change(db, cid, _hold_by_campaign) for cid in ids]
    return CampaignChange(name, CampaignStatus.PAUSED, tuple(changes))


async def _hold_by_campaign(session: AsyncSession, row: Conversation) -> tuple[RunAction, str]:
    if row.status not in (Status.SUSPENDED, Status.PENDING):
        return "none", f"{row.status.value}: held at its next node"
    conversation_row.pause(row, by="campaign")
    return "none", "held by its campaign"


async def resume_campaign(db: Database, name: str) -> CampaignChange:
    """Release the conversations the campaign's pause held; an operator's own pause stands."""
    return await _let_go(db, name, "resume")


async def activate_campaign(db: Database, name: str) -> CampaignChange:
    """A draft (or paused, or archived) campaign goes on: the conversations its gate held are
    released as a resume releases them. An active campaign: nothing changes."""
    return await _let_go(db, name, "activate")


async def _let_go(db: Database, name: str, move: Move) -> CampaignChange:
    async with db.transaction() as session:
        before, after = await _move_campaign(session, name, move)
        ids = (
            await queries.conversations.conversation_ids_of_campaign(session, name, [Status.PAUSED])
            if before in HELD_BY_CAMPAIGN
            else []
        )
    changes = [await _change(db, cid, _release_from_campaign) for cid in ids]
    return CampaignChange(name, after, tuple(changes))


async def archive_campaign(db: Database, name: str, reason: str | None = None) -> CampaignChange:
    """No new conversations from now on; the running ones finish. A draft or paused campaign
    holds its conversations at the gate and an archive would never release them: refused
    while it has any (activate it, or cancel them, first)."""
    async with db.transaction() as session:
        before, after = await _move_campaign(session, name, "archive", reason)
        if before in HELD_BY_CAMPAIGN:
            waiting = await queries.conversations.conversation_ids_of_campaign(
                session, name, sorted(ACTIVE)
            )
            if waiting:
                raise TransitionNotAllowed(
                    f"campaign {name!r} is {before.value} and holds {len(waiting)} "
                    "conversation(s) at its gate: activate it or cancel them before archiving"
                )
    return CampaignChange(name, after, ())


async def _release_from_campaign(session: AsyncSession, row: Conversation) -> tuple[RunAction, str]:
    if row.status is not Status.PAUSED or row.paused_by != "campaign":
        return "none", "paused by an operator: stays paused"
    run = _release(row)
    if run == "start":
        return run, "released: its first run starts"
    return run, "released" + await _actions_released(session, row)


async def _known_campaign(session: AsyncSession, name: str) -> None:
    if not await queries.campaigns.campaign_versions_named(session, name):
        raise NotFound(f"campaign {name!r} does not exist")
