"""Importing leads in bulk: every row checked first, the import and all its rows stored, then
the conversations created in batches — one transaction per batch, not one per lead.

A created conversation is ``pending`` with no run: the dispatcher starts the runs of imported
conversations at ``PARLEY_RUN_STARTS_PER_SECOND`` (a Prefect server swamped by 10,000 run
creations at once holds up every conversation it already runs), and each lead's first action
then waits for its identity's hours and limits like any other.

Nothing is lost to a crash: rows without an outcome are what is left to do, and importing the
same content again (same digest) finishes the interrupted import instead of starting another.
A lead an earlier import of the same campaign and identity started is skipped (per-row key),
so importing a file twice starts nothing new.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from parley import suppression
from parley.campaign import Campaign
from parley.campaign import status as campaign_status
from parley.campaign.registry import campaign_of
from parley.conversation import row as conversation_row
from parley.conversation.lead_rows import CheckedRow, Lead, check_rows, content_digest
from parley.conversation.state_machine import Placement
from parley.db import Database, queries
from parley.db.models import CampaignVersion, Conversation, Identity, LeadImportRow, utcnow
from parley.errors import ConcurrentUpdate, NotFound, TransitionNotAllowed
from parley.vocabulary import Status

BATCH_SIZE = 500
"""Leads per transaction: big enough that 10,000 leads are 20 commits, small enough that a
batch holds its locks for well under a second."""
RACES = 5

STARTED = "started"
SKIPPED = "skipped"
INVALID = "invalid"
ACTIVE_ALREADY = "already in an active conversation with this identity"


@dataclass(frozen=True)
class Outcome:
    """What became of one lead: ``started`` (its conversation is created; the dispatcher starts
    its run), ``skipped`` or ``invalid``, with the reason."""

    outcome: str
    detail: str | None = None
    conversation_id: int | None = None

    @property
    def text(self) -> str:
        return self.outcome if self.detail is None else f"{self.outcome}: {self.detail}"


@dataclass(frozen=True)
class Prepared:
    import_id: int
    total: int
    resumed: bool  # an interrupted import of the same content, now finished


ProgressHook = Callable[[int], None]
"""Called after each committed batch with the number of rows it settled."""


# --- the campaign-level checks ------------------------------------------------------------------


async def campaign_for_new_leads(session: AsyncSession, name: str) -> CampaignVersion:
    """The one place an import (and ``add_to_campaign``) asks whether the campaign takes new
    conversations, and which version they start on: an archived campaign refuses them
    (``TransitionNotAllowed``); a draft takes them, and they wait at its gate."""
    version = await queries.campaigns.latest_campaign_version(session, name)
    await campaign_status.check_accepts_new_conversations(session, name)
    return version


# --- preparing ---------------------------------------------------------------------------------


async def prepare(
    db: Database,
    campaign: str,
    identity_id: int,
    rows: Sequence[Mapping[str, Any]],
    *,
    source: str,
) -> Prepared:
    """Check every row and store the import with all its rows (one transaction); nothing is
    created yet. The same content into the same campaign for the same identity, interrupted
    earlier, is that import again (its remaining rows are finished by ``run``)."""
    digest = content_digest(rows, campaign, identity_id)
    async with db.transaction() as session:
        await _known_identity(session, identity_id)
        version = await campaign_for_new_leads(session, campaign)
        unfinished = await queries.lead_imports.unfinished_import(
            session, digest, campaign, identity_id
        )
        if unfinished is not None:
            return Prepared(unfinished.id, unfinished.total, resumed=True)
        checked = check_rows(rows, campaign_of(version))
        record = await queries.lead_imports.add_import(
            session,
            campaign=campaign,
            identity_id=identity_id,
            source=source,
            digest=digest,
            rows=[_stored(row) for row in checked],
        )
        return Prepared(record.id, record.total, resumed=False)


async def _known_identity(session: AsyncSession, identity_id: int) -> Identity:
    identity = await session.get(Identity, identity_id)
    if identity is None:
        raise NotFound(f"identity {identity_id} does not exist")
    return identity


def _stored(row: CheckedRow) -> dict[str, Any]:
    if row.lead is None:
        return {
            "row_number": row.number,
            "lead_key": None,
            "lead": dict(row.raw),
            "outcome": INVALID,
            "detail": row.invalid,
            "conversation_id": None,
        }
    return {
        "row_number": row.number,
        "lead_key": row.lead.key,
        "lead": row.lead.as_json(),
        "outcome": None,
        "detail": None,
        "conversation_id": None,
    }


# --- creating, batch by batch ------------------------------------------------------------------


async def run(
    db: Database,
    import_id: int,
    *,
    batch_size: int = BATCH_SIZE,
    on_batch: ProgressHook | None = None,
) -> dict[str, int]:
    """Create the conversations of the import's open rows, a batch per transaction, until none
    is left; returns the rows per outcome. Safe to run twice at once (rows are claimed)."""
    while settled := await _one_batch(db, import_id, batch_size):
        if on_batch is not None:
            on_batch(settled)
    async with db.transaction() as session:
        await queries.lead_imports.finish_import(session, import_id, utcnow())
        return await queries.lead_imports.outcome_counts(session, import_id)


async def _one_batch(db: Database, import_id: int, batch_size: int) -> int:
    """One transaction: claim open rows, settle each. A conversation a webhook created for one
    of the leads meanwhile fails the batch at flush (the pair's unique index): it is done again
    and that lead is skipped."""
    for _ in range(RACES):
        try:
            async with db.transaction() as session:
                record = await queries.lead_imports.get_import(session, import_id)
                items = await queries.lead_imports.claim_open_rows(session, import_id, batch_size)
                if not items:
                    return 0
                leads = [Lead.from_json(item.lead) for item in items]
                outcomes = await place_leads(
                    session, record.campaign, record.identity_id, import_id, leads
                )
                for item, outcome in zip(items, outcomes, strict=True):
                    _settle(item, outcome)
                return len(items)
        except IntegrityError:
            continue
    raise ConcurrentUpdate(f"import {import_id}: its leads kept being started elsewhere")


def _settle(item: LeadImportRow, outcome: Outcome) -> None:
    item.outcome = outcome.outcome
    item.detail = outcome.detail
    item.conversation_id = outcome.conversation_id


async def place_leads(
    session: AsyncSession,
    campaign: str,
    identity_id: int,
    import_id: int,
    leads: Sequence[Lead],
    *,
    replacing: Conversation | None = None,
) -> list[Outcome]:
    """The checks every lead goes through, then its conversation, in the caller's transaction:
    the import's batches and the ``add_to_campaign`` node both come here. The campaign archived
    since the import was checked: the leads still to place are skipped, with why."""
    try:
        version = await campaign_for_new_leads(session, campaign)
    except TransitionNotAllowed as exc:
        return [Outcome(SKIPPED, str(exc)) for _ in leads]
    graph = campaign_of(version)
    outcomes: dict[int, Outcome] = {}
    earlier = await queries.lead_imports.started_before(
        session, campaign, identity_id, [lead.key for lead in leads]
    )
    for n, lead in enumerate(leads):
        if (other := earlier.get(lead.key)) is not None and other != import_id:
            outcomes[n] = Outcome(SKIPPED, f"already imported into {campaign} (import {other})")
        elif missing := [i for i in graph.inputs if lead.variables.get(i) in (None, "")]:
            outcomes[n] = Outcome(INVALID, f"missing campaign input(s): {', '.join(missing)}")
    todo = [n for n in range(len(leads)) if n not in outcomes]
    outcomes.update(await _suppressed(session, identity_id, [(n, leads[n]) for n in todo]))
    todo_leads = [(n, leads[n]) for n in todo if n not in outcomes]
    outcomes.update(
        await _create(session, version, graph, identity_id, import_id, todo_leads, replacing)
    )
    return [outcomes[n] for n in range(len(leads))]


async def _suppressed(
    session: AsyncSession, identity_id: int, leads: Sequence[tuple[int, Lead]]
) -> dict[int, Outcome]:
    """Leads on the do-not-contact list, by any address the row gives them (the one they would
    be contacted on and their email, phone and LinkedIn fields), for everyone or this identity."""
    addresses_of = {n: _addresses_of(lead) for n, lead in leads}
    covered = await suppression.suppressed_among(
        session, identity_id, [a for addresses in addresses_of.values() for a in addresses]
    )
    outcomes: dict[int, Outcome] = {}
    for n, addresses in addresses_of.items():
        entry = next((covered[a] for a in addresses if a in covered), None)
        if entry is not None:
            outcomes[n] = Outcome(SKIPPED, f"suppressed ({entry.reason})")
    return outcomes


def _addresses_of(lead: Lead) -> list[str]:
    found = [lead.address]
    for name in suppression.LEAD_ADDRESS_FIELDS:
        value = lead.fields.get(name)
        if isinstance(value, str) and value:
            found.append(value)
    return list(dict.fromkeys(found))


async def _create(
    session: AsyncSession,
    version: CampaignVersion,
    graph: Campaign,
    identity_id: int,
    import_id: int,
    leads: Sequence[tuple[int, Lead]],
    replacing: Conversation | None = None,
) -> dict[int, Outcome]:
    """``replacing``: the conversation of an ``add_to_campaign`` node moving its lead to
    another campaign of the same identity (one active conversation per identity and lead): it
    is not in the way, and it ends once the new one is created."""
    contacts = await queries.contacts.ensure_contacts(
        session, [(lead.channel, lead.address, lead.name) for _, lead in leads]
    )
    active = await queries.conversations.active_with_identity(
        session, identity_id, [contact.id for contact in contacts.values()]
    )
    if replacing is not None and active.get(replacing.contact_id) == replacing.id:
        del active[replacing.contact_id]
    outcomes: dict[int, Outcome] = {}
    created = []
    for n, lead in leads:
        contact = contacts[(lead.channel, lead.address)]
        if lead.fields:
            contact.fields = {**contact.fields, **lead.fields}
        if contact.id in active:
            outcomes[n] = Outcome(SKIPPED, ACTIVE_ALREADY, active[contact.id])
            continue
        conversation = queries.conversations.new_imported_conversation(
            session, identity_id, contact.id, version, graph.start, import_id
        )
        conversation_row.give_inputs(conversation, lead.variables)
        active[contact.id] = -1  # a second lead for the same contact in this batch: skipped
        created.append((n, conversation))
    if created and replacing is not None and replacing.identity_id == identity_id:
        conversation_row.end(replacing, Status.COMPLETED, f"moved to campaign {version.name}")
        await session.flush()  # its row leaves the active pair before the new one enters
    await session.flush()  # the pair's unique index refuses a conversation created meanwhile
    for n, conversation in created:
        outcomes[n] = Outcome(STARTED, None, conversation.id)
    return outcomes


# --- the add_to_campaign node -------------------------------------------------------------------


async def place_from_conversation(
    session: AsyncSession, row: Conversation, placement: Placement, step: int
) -> dict[str, Any]:
    """Start the conversation's lead in another campaign, in the step's transaction, through
    the import's checks: an import of one row (named by the conversation and step, so it is
    found again, never repeated). The campaign's inputs come from the conversation's
    variables of the same names. Returns the node's ``task_result``."""
    identity_id = placement.identity_id or row.identity_id
    try:
        await _known_identity(session, identity_id)
        version = await campaign_for_new_leads(session, placement.campaign)
    except NotFound as exc:
        return {"outcome": INVALID, "reason": str(exc), "conversation_id": None}
    except TransitionNotAllowed as exc:  # archived: no new conversations there
        return {"outcome": SKIPPED, "reason": str(exc), "conversation_id": None}
    contact = await queries.contacts.get_contact(session, row.contact_id)
    inputs = campaign_of(version).inputs
    variables = {name: row.variables[name] for name in inputs if name in row.variables}
    lead = Lead(contact.channel, contact.address, contact.name, {}, variables)
    record = await queries.lead_imports.add_import(
        session,
        campaign=placement.campaign,
        identity_id=identity_id,
        source=f"add_to_campaign {row.current_node} of conversation {row.id}",
        digest=content_digest([{"conversation": row.uid, "step": step}], version.name, identity_id),
        rows=[_stored(CheckedRow(1, lead))],
    )
    [outcome] = await place_leads(
        session, placement.campaign, identity_id, record.id, [lead], replacing=row
    )
    for item in await queries.lead_imports.claim_open_rows(session, record.id, 1):
        _settle(item, outcome)
    await queries.lead_imports.finish_import(session, record.id, utcnow())
    return {
        "outcome": outcome.outcome,
        "reason": outcome.detail,
        "conversation_id": outcome.conversation_id,
    }


# --- one call -----------------------------------------------------------------------------------


async def import_leads(
    db: Database,
    campaign: str,
    identity_id: int,
    rows: Sequence[Mapping[str, Any]],
    *,
    source: str,
    batch_size: int = BATCH_SIZE,
    on_batch: ProgressHook | None = None,
) -> tuple[Prepared, dict[str, int]]:
    prepared = await prepare(db, campaign, identity_id, rows, source=source)
    counts = await run(db, prepared.import_id, batch_size=batch_size, on_batch=on_batch)
    return prepared, counts


# --- reading an import back ---------------------------------------------------------------------


async def progress(db: Database, import_id: int, *, with_rows: bool = True) -> dict[str, Any]:
    """Where the import is: rows per outcome (``pending``: not yet done), how many of its
    conversations have their run started, and (``with_rows``) the report, row by row."""
    async with db.read() as session:
        record = await queries.lead_imports.get_import(session, import_id)
        counts = await queries.lead_imports.outcome_counts(session, import_id)
        started_runs = await queries.lead_imports.runs_started(session, import_id)
        view: dict[str, Any] = {
            "id": record.id,
            "campaign": record.campaign,
            "identity_id": record.identity_id,
            "source": record.source,
            "status": record.status,
            "total": record.total,
            "counts": counts,
            "runs_started": started_runs,
            "created_at": record.created_at.isoformat(),
            "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        }
        if with_rows:
            rows = await queries.lead_imports.report_rows(session, import_id)
            view["rows"] = [report_line(item) for item in rows]
        return view


def report_line(item: LeadImportRow) -> dict[str, Any]:
    lead = item.lead or {}
    outcome = item.outcome or "pending"
    return {
        "row": item.row_number,
        "channel": lead.get("channel"),
        "address": lead.get("address") or lead.get("email") or lead.get("linkedin"),
        "name": lead.get("name"),
        "outcome": outcome if item.detail is None else f"{outcome}: {item.detail}",
        "conversation_id": item.conversation_id,
    }


REPORT_COLUMNS = ("row", "channel", "address", "name", "outcome", "conversation_id")


def counts_of(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return dict(Counter(outcome.text for outcome in outcomes))
