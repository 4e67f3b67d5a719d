"""The campaign funnel: per node of one campaign version, how many conversations got there,
how many are there now, how many were lost there, and how long they stay.

It is read from the step history (``node_visits``), which grows with the graph walked and never
with the transcript, so the funnel of a campaign with long chats costs what its walks cost.
The counts, per node, in graph file order:

* ``reached``: distinct conversations with a visit at the node;
* ``waiting_now``: active conversations whose current node it is;
* ``dropped_off``: distinct conversations whose journey ended there without completing (the
  visit ended ``failed`` or ``cancelled``);
* ``completed``: visits that ended normally (left by an edge, or the conversation completed
  there). Visits, not conversations: a node walked twice by one conversation counts twice;
* ``time_in_node``: p50/p95 seconds over closed visits, migrated ones included (the time was
  spent there). ``None`` when no visit has closed yet;
* ``actions``: the outreach action types the node performs (a send's ``action``, a bundle's
  actions in order), so a funnel of outreach reads "like_post", "bundle of visit and
  connection" rather than a row of "send". A bundle's visit counts once however many of its
  actions went out; a bundle that failed part-way shows in ``dropped_off`` only when the
  conversation ended there (its error edge usually leads on).

A conversation migrated away keeps its visits on the version it left (outcome ``migrated``):
it counts as reached there, neither completed nor dropped off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from parley.campaign import BundleNode, SendNode
from parley.campaign.model import Node
from parley.campaign.registry import campaign_of
from parley.db import Database, queries
from parley.errors import NotFound


@dataclass(frozen=True)
class NodeFunnel:
    node: str
    type: str
    reached: int
    waiting_now: int
    dropped_off: int
    completed: int
    p50_seconds: float | None
    p95_seconds: float | None
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Funnel:
    campaign: str
    version: int
    nodes: tuple[NodeFunnel, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "version": self.version,
            "nodes": [asdict(node) for node in self.nodes],
        }


async def campaign_funnel(db: Database, name: str, version: int | None = None) -> Funnel:
    """The funnel of ``name`` at ``version`` (default: its latest). An unknown campaign or
    version raises ``NotFound``."""
    async with db.read() as session:
        versions = await queries.campaigns.campaign_versions_named(session, name)
        if not versions:
            raise NotFound(f"campaign {name!r} does not exist")
        row = (
            versions[-1]
            if version is None
            else await queries.campaigns.campaign_version_numbered(session, name, version)
        )
        counts = await queries.visits.funnel_visit_counts(session, row.id)
        waiting = await queries.visits.funnel_waiting(session, row.id)
        stays = await queries.visits.funnel_stays(session, row.id)
    durations: dict[str, list[float]] = {}
    for node_id, entered_at, left_at in stays:
        durations.setdefault(node_id, []).append(max(0.0, (left_at - entered_at).total_seconds()))
    nodes = []
    for node in campaign_of(row).nodes:
        reached, dropped, completed = counts.get(node.id, (0, 0, 0))
        seconds = sorted(durations.get(node.id, []))
        nodes.append(
            NodeFunnel(
                node=node.id,
                type=node.type,
                reached=reached,
                waiting_now=waiting.get(node.id, 0),
                dropped_off=dropped,
                completed=completed,
                p50_seconds=percentile(seconds, 0.50),
                p95_seconds=percentile(seconds, 0.95),
                actions=actions_of(node),
            )
        )
    return Funnel(row.name, row.version, tuple(nodes))


def actions_of(node: Node) -> tuple[str, ...]:
    """The outreach action types a node performs, in order; empty for the others."""
    if isinstance(node, BundleNode):
        return tuple(member.action for member in node.actions)
    if isinstance(node, SendNode) and node.action is not None:
        return (node.action,)
    return ()


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's ``percentile_cont``), so the
    figure does not jump between backends; ``ordered`` must be sorted."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    value = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return round(value, 3)
