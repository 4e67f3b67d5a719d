"""A campaign's status and the moves between them (docs/campaigns.md, "Campaign status").

    draft ──activate──▶ active ──pause──▶ paused ──resume/activate──▶ active
      │                   │                 │
      └──archive──▶ archived ◀──archive─────┘          archived ──activate──▶ active

* ``draft``: published, nothing goes out. Conversations may be started; they wait at the pause
  gate (as a paused campaign's do) until the campaign is activated.
* ``archived``: no new conversations (``check_accepts_new_conversations``); the running ones
  finish. ``activate`` brings it back on purpose — an archive is a decision, not a deletion.
* A draft or paused campaign is archived only while none of its conversations is active: they
  are held at the gate, and an archived campaign never releases them (activate or cancel them
  first).

Which version a new conversation gets: the campaign's newest published version, whatever the
status (publishing never moves a running conversation; ``parley campaign migrate`` does).
"""

from __future__ import annotations

from typing import Final, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from parley.db import queries
from parley.db.models import CampaignState
from parley.errors import TransitionNotAllowed
from parley.vocabulary import CampaignStatus

Move = Literal["activate", "pause", "resume", "archive"]

DRAFT, ACTIVE, PAUSED, ARCHIVED = (
    CampaignStatus.DRAFT,
    CampaignStatus.ACTIVE,
    CampaignStatus.PAUSED,
    CampaignStatus.ARCHIVED,
)

MOVES: Final[dict[Move, tuple[frozenset[CampaignStatus], CampaignStatus]]] = {
    "activate": (frozenset({DRAFT, ACTIVE, PAUSED, ARCHIVED}), ACTIVE),
    "pause": (frozenset({ACTIVE, PAUSED}), PAUSED),
    "resume": (frozenset({PAUSED}), ACTIVE),
    "archive": (frozenset({DRAFT, ACTIVE, PAUSED, ARCHIVED}), ARCHIVED),
}
"""Each move: the statuses it starts from and where it leads. Activating an active campaign
and pausing a paused one change nothing and are not errors (a deploy script may repeat them)."""

_WHY_NOT: Final[dict[tuple[Move, CampaignStatus], str]] = {
    ("pause", DRAFT): "is a draft: its conversations wait already; activate it to let them go",
    ("pause", ARCHIVED): "is archived: activate it first to pause it",
    ("resume", DRAFT): "is a draft, not paused: activate it",
    ("resume", ACTIVE): "is not paused",
    ("resume", ARCHIVED): "is archived, not paused: activate it to take it back",
}


def status_of(row: CampaignState | None) -> CampaignStatus:
    """A campaign without a status row (a version stored by a path that predates statuses)
    goes on as it always did: active."""
    return CampaignStatus(row.status) if row is not None else ACTIVE


def next_status(name: str, current: CampaignStatus, move: Move) -> CampaignStatus:
    """Where ``move`` takes the campaign; ``TransitionNotAllowed`` says why it cannot."""
    starts, target = MOVES[move]
    if current not in starts:
        why = _WHY_NOT.get((move, current), f"is {current.value}")
        raise TransitionNotAllowed(f"campaign {name!r} {why}")
    return target


def accepts_new_conversations(status: CampaignStatus) -> bool:
    """A draft or paused campaign takes new conversations (they wait at the gate); only an
    archived one refuses them."""
    return status is not ARCHIVED


async def check_accepts_new_conversations(session: AsyncSession, name: str) -> None:
    """Every path that creates conversations (a start, an import) asks this first:
    ``TransitionNotAllowed`` when the campaign is archived."""
    status = status_of(await queries.campaigns.campaign_state(session, name))
    if not accepts_new_conversations(status):
        raise TransitionNotAllowed(
            f"campaign {name!r} is archived: it accepts no new conversations "
            f"(`parley campaign activate {name}` takes it back)"
        )
