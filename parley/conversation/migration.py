"""Moving waiting conversations of a campaign onto another version of its graph.

Running conversations keep the version they started on (a live process is walking the graph it
loaded). Only *waiting* ones move — ``suspended`` or ``paused`` with no process holding them
(no lease) — and only explicitly: ``migrate(db, name, to=3, mapping={"ask_mail": "ask_email"})``.
Each one's current node goes through ``mapping``, or keeps its id when the target version has
that node. If any conversation's node has no place in the target, nothing moves at all and
``MigrationRefused`` lists every such conversation with its node.

**One transaction with row locks, not per-row optimistic locking.** The refusal is all or
nothing: the check of every row and the change of every row must see the same rows, which one
transaction gives and a series of per-row optimistic retries (``lifecycle._change``) cannot — a
conversation could move to a node without a mapping between the check and the change. The rows
are taken with ``SELECT ... FOR UPDATE`` in id order (on SQLite the transaction holds the
database write lock). A run being resumed meanwhile waits for the lock in ``begin_run`` and then
loads the new version; a command racing us through ``lifecycle._change`` loses its version
check and retries on the migrated row. The lock lasts one read and, per moved conversation, one
row update and two visit writes.

What a moved conversation looks like: it points at the target version and the mapped node; its
visit there is closed with outcome ``migrated`` (``next_node`` says where it went) and a visit
on the target version is opened. If the target node is of the same type as the old one, the
node's progress carries over (an ask still waits for the answer to the prompt already sent, a
timer keeps its deadline). A node of another type is entered afresh: its work (a send, a
``set``, a timer) is done when the run looks again, so a suspended conversation is owed a
resume (``wake_requested_at``: the dispatcher resumes it within a tick).

A conversation waiting at an outreach send node for its queued action keeps waiting for that
same action: its node must map to a send node with the same action type (else the migration is
refused with that reason), and the action's payload is re-pointed at the new node in the same
transaction. It goes out as it was queued (its text rendered from the old version), once, and
its outcome moves the conversation on in the new version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from parley.campaign import Campaign, SendNode
from parley.campaign.registry import campaign_of
from parley.clock import Clock, SystemClock
from parley.conversation import row as conversation_row
from parley.db import Database, queries
from parley.db.models import Action, CampaignVersion, Conversation
from parley.errors import InvalidInput, NotFound
from parley.vocabulary import Status, WaitKind

MIGRATED = "migrated"
"""The outcome of a visit that ended because its conversation moved to another version."""
WAITING = (Status.SUSPENDED, Status.PAUSED)


@dataclass(frozen=True)
class Moved:
    conversation_id: int
    from_version: int
    from_node: str
    to_node: str
    status: str
    fresh: bool  # entered the target node afresh (another node type): its run looks again


@dataclass(frozen=True)
class Unmapped:
    conversation_id: int | None  # None: a --map entry whose target does not exist
    node: str
    reason: str


@dataclass(frozen=True)
class Migration:
    campaign: str
    to_version: int
    moved: tuple[Moved, ...]
    staying: tuple[int, ...]  # active conversations with a live process: they keep their version

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "to_version": self.to_version,
            "moved": [asdict(m) for m in self.moved],
            "staying": list(self.staying),
        }


class MigrationRefused(InvalidInput):
    """Some waiting conversation's node has no place in the target version: nothing moved."""

    def __init__(self, campaign: str, to_version: int, unmapped: list[Unmapped]) -> None:
        self.campaign, self.to_version, self.unmapped = campaign, to_version, unmapped
        lines = [
            f"conversation {u.conversation_id} at {u.node!r}: {u.reason}"
            if u.conversation_id is not None
            else f"--map {u.node}: {u.reason}"
            for u in unmapped
        ]
        super().__init__(
            f"migration of {campaign!r} to v{to_version} refused; nothing was changed. "
            "Give a --map old=new for each of:\n" + "\n".join(lines)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "to_version": self.to_version,
            "refused": True,
            "unmapped": [asdict(u) for u in self.unmapped],
        }


async def migrate(
    db: Database,
    name: str,
    to: int,
    mapping: Mapping[str, str] | None = None,
    clock: Clock | None = None,
) -> Migration:
    """Move the campaign's waiting conversations on other versions to version ``to``."""
    mapping = dict(mapping or {})
    now = (clock or SystemClock()).now()
    async with db.transaction() as session:
        target = await queries.campaigns.campaign_version_numbered(session, name, to)
        graph = campaign_of(target)
        versions = {v.id: v for v in await queries.campaigns.campaign_versions_named(session, name)}
        rows = await queries.conversations.lock_conversations_of_campaign(session, name, WAITING)
        waiting = [r for r in rows if _waiting(r) and r.campaign_version_id != target.id]
        unmapped = [u for r in waiting if (u := _unmapped(r, graph, mapping)) is not None]
        unmapped += _bad_targets(graph, mapping, {r.current_node for r in waiting})
        awaited = await _awaited_actions(session, waiting)
        placed = [r for r in waiting if r.id not in {u.conversation_id for u in unmapped}]
        unmapped += [
            u
            for r in placed
            if r.id in awaited and (u := _misfit(r, awaited[r.id], graph, to, mapping)) is not None
        ]
        if unmapped:
            raise MigrationRefused(name, to, sorted(unmapped, key=_by_conversation))
        moved = [
            await _move(session, row, target, graph, versions, mapping, now, awaited.get(row.id))
            for row in waiting
        ]
        staying = tuple(
            await queries.conversations.active_ids_off_version(session, name, target.id)
        )
    return Migration(name, to, tuple(moved), staying)


def _waiting(row: Conversation) -> bool:
    """Suspended or paused with no process holding it (a paused run that has not reached its
    next node yet still holds its lease: it is running on its version)."""
    return row.status in WAITING and row.lease_until is None


def _bad_targets(
    graph: Campaign, mapping: Mapping[str, str], current_nodes: set[str]
) -> list[Unmapped]:
    """``--map`` entries no waiting conversation needs but whose target does not exist either:
    a typo the operator wants to hear about before the next migration, not after."""
    return [
        Unmapped(None, old, f"--map target {new!r} is not a node of v{graph.version}")
        for old, new in sorted(mapping.items())
        if old not in current_nodes and not _has(graph, new)
    ]


def _has(graph: Campaign, node_id: str) -> bool:
    try:
        graph.node(node_id)
    except NotFound:
        return False
    return True


def _unmapped(row: Conversation, graph: Campaign, mapping: Mapping[str, str]) -> Unmapped | None:
    target = mapping.get(row.current_node, row.current_node)
    if _has(graph, target):
        return None
    return Unmapped(row.id, row.current_node, f"no node {target!r} in v{graph.version}")


def _by_conversation(u: Unmapped) -> tuple[bool, int]:
    return u.conversation_id is None, u.conversation_id or 0


async def _awaited_actions(session: AsyncSession, rows: list[Conversation]) -> dict[int, Action]:
    """The action each conversation waiting at an outreach send node waits for, locked: a
    dispatcher skips it (``SKIP LOCKED``) until the migration commits."""
    found: dict[int, Action] = {}
    for row in rows:
        if row.waiting_for == WaitKind.ACTION and row.action_step is not None:
            action = await queries.actions.lock_action_of_step(session, row.id, row.action_step)
            if action is not None:
                found[row.id] = action
    return found


def _misfit(
    row: Conversation, action: Action, graph: Campaign, to: int, mapping: Mapping[str, str]
) -> Unmapped | None:
    """A conversation waiting for its action can only go to a send node of the same action
    type: any other node would read (or never get) the outcome of an action it did not
    queue — an invitation's acceptance awaited at an email node, a skipped send taken as
    sent."""
    new_id = mapping.get(row.current_node, row.current_node)
    node = graph.node(new_id)
    if isinstance(node, SendNode) and node.action == action.type:
        return None
    what = (
        f"a send node with action {node.action}"
        if isinstance(node, SendNode) and node.action
        else f"a {node.type} node"
    )
    return Unmapped(
        row.id,
        row.current_node,
        f"it waits for its {action.type} action; {new_id!r} in v{to} is {what}, "
        f"not a send node with action {action.type}",
    )


async def _move(
    session: AsyncSession,
    row: Conversation,
    target: CampaignVersion,
    graph: Campaign,
    versions: Mapping[int, CampaignVersion],
    mapping: Mapping[str, str],
    now: datetime,
    action: Action | None,
) -> Moved:
    source = versions[row.campaign_version_id]
    old_node, new_node = row.current_node, mapping.get(row.current_node, row.current_node)
    fresh = campaign_of(source).node(old_node).type != graph.node(new_node).type
    if action is not None and action.status != "done":
        # Its action goes with it: what names the node is the new id (the dispatcher matches
        # the outcome by the step that queued it; the payload's node is what operators read).
        action.payload = {**action.payload, "node": new_node}
    await queries.visits.close_visit(session, row.id, at=now, outcome=MIGRATED, next_node=new_node)
    conversation_row.migrate(row, target.id, new_node, now, fresh=fresh)
    await queries.visits.open_visit(session, row, new_node, now)
    return Moved(row.id, source.version, old_node, new_node, row.status.value, fresh)
