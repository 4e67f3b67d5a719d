"""1,000 queued actions over 50 identities drain with every limit honoured — checked from the
recorded send times, under a driven clock, on SQLite and PostgreSQL. The identities are worked
in parallel (as the dispatcher does), each one action at a time."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley.campaign.registry import CampaignCache
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.clock import DrivenClock
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.db.models import Action, Identity
from parley.outreach import dispatch
from parley.runtime import Runtime

IDENTITIES = 50
PER_IDENTITY = 20
DAILY = 8
SPACING = timedelta(minutes=20)
MONDAY_0900 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
POLICY = {
    "working_hours": {"weekly": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}},
    "limits": {"actions": {"linkedin_message": {"daily": DAILY, "spacing": "20m"}}},
}


@pytest.fixture
def gateway() -> Iterator[FakeLinkedInGateway]:
    accounts = [f"seat-{n}" for n in range(IDENTITIES)]
    fake = FakeLinkedInGateway(require_connection=False, accounts=accounts, auto_delivered=False)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
async def rt(db: Database, tmp_path: Path) -> AsyncIterator[Runtime]:
    clock = DrivenClock(tmp_path / "offset")
    clock.set_offset(MONDAY_0900 - datetime.now(UTC))
    channel = LinkedInChannel(LinkedInConfig())
    yield Runtime(
        db=db,
        channels={},
        post_json=post_json,
        campaigns=CampaignCache(),
        clock=clock,
        outreach={"linkedin": channel},
    )
    await channel.aclose()


async def _queue(db: Database, gateway: FakeLinkedInGateway) -> list[int]:
    ids = []
    async with db.transaction() as session:
        for n in range(IDENTITIES):
            sender = gateway.sender(f"seat-{n}")
            identity = Identity(
                channel="linkedin",
                address=sender.address,
                timezone="UTC",
                policy=POLICY,
                settings=dict(sender.settings),
            )
            session.add(identity)
            await session.flush()
            ids.append(identity.id)
            for k in range(PER_IDENTITY):
                session.add(
                    Action(
                        identity_id=identity.id,
                        channel="linkedin",
                        type="linkedin_message",
                        payload={"to": f"https://linkedin.example/in/{n}-{k}", "text": "hi"},
                        not_before=MONDAY_0900,
                        idempotency_key=f"drain-{n}-{k}",
                    )
                )
    return ids


async def _drain_once(rt: Runtime, identity_id: int, rng: random.Random) -> None:
    while await dispatch.perform_next(rt, identity_id, rng) not in ("idle", "waiting"):
        pass


@pytest.mark.parametrize("backend", ["postgresql"])  # many writers at once: PostgreSQL's case
async def test_a_thousand_actions_over_fifty_identities_drain_within_every_limit(
    db: Database, rt: Runtime, gateway: FakeLinkedInGateway
) -> None:
    identity_ids = await _queue(db, gateway)
    rng = random.Random(3)
    assert isinstance(rt.clock, DrivenClock)
    for _ in range(400):
        await asyncio.gather(*(_drain_once(rt, i, rng) for i in identity_ids))
        async with db.read() as session:
            pending = await session.execute(
                select(func.min(Action.not_before)).where(Action.status == "queued")
            )
            next_due = pending.scalar_one_or_none()
        if next_due is None:
            break
        rt.clock.advance(max(next_due - rt.clock.now(), timedelta(0)) + timedelta(seconds=1))
    async with db.read() as session:
        rows = list((await session.execute(select(Action))).scalars())
    assert all(a.outcome == "sent" for a in rows), Counter(a.status for a in rows)
    assert len(gateway.performed) == IDENTITIES * PER_IDENTITY  # none twice, none lost
    by_identity: dict[int, list[datetime]] = defaultdict(list)
    for action in rows:
        assert action.performed_at is not None
        by_identity[action.identity_id].append(action.performed_at)
    for times in by_identity.values():
        times.sort()
        assert all(t.weekday() < 5 and 9 <= t.hour < 17 for t in times)  # working hours
        per_day = Counter(t.date() for t in times)
        assert max(per_day.values()) <= DAILY  # the daily cap
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= SPACING  # spacing between two actions of the type
    days = {t.date() for times in by_identity.values() for t in times}
    assert len(days) == 3  # 20 per identity at 8 a day: Monday, Tuesday, Wednesday
