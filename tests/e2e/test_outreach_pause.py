"""A pause over the weekend on a real stack (worker, webhook, dispatcher, Prefect server, on
PostgreSQL) against the loopback LinkedIn gateway, on a driven clock: the invitation queued on
Friday evening is held while the conversation (or its campaign) is paused on Monday morning,
and goes out once after the resume — the run waits for it at its node and its outcome moves
the run on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from parley.campaign.registry import install_campaign
from parley.clock import DrivenClock
from parley.db import Database
from parley.db.models import Action
from tests.e2e.conftest import E2EStack, eventually

pytestmark = pytest.mark.e2e

SEATS = ("seat-pause-1", "seat-pause-2", "seat-pause-3")
FRIDAY_1701 = datetime(2026, 12, 11, 17, 1, tzinfo=UTC)
MONDAY_09 = datetime(2026, 12, 14, 9, 0, tzinfo=UTC)
MONDAY_0905 = datetime(2026, 12, 14, 9, 5, tzinfo=UTC)
MONDAY_11 = datetime(2026, 12, 14, 11, 0, tzinfo=UTC)
POLICY = {
    "working_hours": {"weekly": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}},
    "limits": {"actions": {"linkedin_connection": {"spacing": "0s"}}},
}
INVITE = """
name: invite-first
channel: linkedin
inputs: [first_name]
on_reply: stopped
start: connect
nodes:
  - {id: connect, type: send, action: linkedin_connection, text: "Hi {first_name}, let's connect"}
  - {id: wait_accept, type: wait_for_reply, timeout: 3d}
  - {id: stopped, type: end}
  - {id: done, type: end}
edges:
  - {from: connect, to: wait_accept}
  - {from: wait_accept, to: stopped, when: replied}
  - {from: wait_accept, to: done, when: no_reply}
"""


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> DrivenClock:
    return DrivenClock(tmp_path_factory.mktemp("pause-clock") / "offset")


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeLinkedInGateway]:
    fake = FakeLinkedInGateway(accounts=SEATS, require_connection=False)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def stack(
    stack_factory: Any, clock: DrivenClock, tmp_path_factory: pytest.TempPathFactory
) -> E2EStack:
    handle: E2EStack = stack_factory(
        "postgresql", hot_wait=0.5, extra_env={"PARLEY_CLOCK_FILE": str(clock.path)}
    )
    path = tmp_path_factory.mktemp("pause-campaign") / "invite.yaml"
    path.write_text(INVITE)

    async def install() -> None:
        db = Database(handle.db_url)
        try:
            async with db.transaction() as session:
                await install_campaign(session, Path(path))
        finally:
            await db.dispose()

    asyncio.run(install())
    return handle


async def _invitation(stack: E2EStack, conversation_id: int) -> Action | None:
    db = Database(stack.db_url)
    try:
        async with db.read() as session:
            rows = await session.execute(
                select(Action).where(
                    Action.conversation_id == conversation_id,
                    Action.type == "linkedin_connection",
                )
            )
            return rows.scalars().one_or_none()
    finally:
        await db.dispose()


def _invitations(gateway: FakeLinkedInGateway, seat: str) -> list[str]:
    return [
        a.idempotency_key
        for a in gateway.performed
        if a.account_id == seat and a.kind == "invitation"
    ]


async def _queued_friday_evening(
    stack: E2EStack, clock: DrivenClock, gateway: FakeLinkedInGateway, seat: str
) -> int:
    """Friday 17:01: the lead's invitation is queued and put off to Monday 09:00."""
    clock.set_offset(FRIDAY_1701 - datetime.now(UTC))
    added = await stack.api(
        "POST",
        "/api/identities",
        {
            "channel": "linkedin",
            "address": seat,
            "policy": POLICY,
            "settings": dict(gateway.sender(seat).settings),
        },
    )
    assert added.status_code == 201, added.text
    started = await stack.api(
        "POST",
        "/api/conversations",
        {
            "campaign": "invite-first",
            "identity_id": added.json()["id"],
            "address": f"https://www.linkedin.com/in/{seat}-lead",
            "variables": {"first_name": "Ada"},
        },
    )
    assert started.status_code == 201, started.text
    cid = int(started.json()["id"])

    async def put_off() -> bool:
        action = await _invitation(stack, cid)
        shown = (await stack.api("GET", f"/api/conversations/{cid}")).json()
        return (
            action is not None
            and action.not_before == MONDAY_09
            and shown["status"] == "suspended"
            and shown["waiting_for"] == "action"
        )

    await eventually("the invitation put off to Monday 09:00, the run asleep", put_off, 120)
    return cid


async def _held_then_sent_after(
    stack: E2EStack,
    clock: DrivenClock,
    gateway: FakeLinkedInGateway,
    seat: str,
    cid: int,
    release: Callable[[], Awaitable[httpx.Response]],
) -> None:
    clock.set_offset(MONDAY_0905 - datetime.now(UTC))  # the hours open; still paused

    async def held() -> bool:
        action = await _invitation(stack, cid)
        return action is not None and action.queue == "paused"

    await eventually("the invitation held while paused", held, 60)
    action = await _invitation(stack, cid)
    assert action is not None and (action.status, action.outcome) == ("queued", None)
    assert _invitations(gateway, seat) == []
    shown = (await stack.api("GET", f"/api/conversations/{cid}")).json()
    assert (shown["status"], shown["current_node"]) == ("paused", "connect")

    clock.set_offset(MONDAY_11 - datetime.now(UTC))
    released = await release()
    assert released.status_code == 200, released.text

    async def moved_on() -> bool:
        shown = (await stack.api("GET", f"/api/conversations/{cid}")).json()
        return bool(
            shown["current_node"] == "wait_accept" and shown["status"] in ("suspended", "running")
        )

    await eventually("the invitation sent and the run at wait_accept", moved_on, 120)
    assert _invitations(gateway, seat) == [action.idempotency_key]
    sent = await _invitation(stack, cid)
    assert sent is not None and (sent.status, sent.outcome) == ("done", "sent")
    assert sent.performed_at is not None and sent.performed_at >= MONDAY_11


async def test_conversation_paused_over_the_weekend_sends_its_invitation_after_resume(
    stack: E2EStack, clock: DrivenClock, gateway: FakeLinkedInGateway
) -> None:
    seat = SEATS[0]
    cid = await _queued_friday_evening(stack, clock, gateway, seat)
    paused = await stack.api("POST", f"/api/conversations/{cid}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused", paused.text
    await _held_then_sent_after(
        stack,
        clock,
        gateway,
        seat,
        cid,
        lambda: stack.api("POST", f"/api/conversations/{cid}/resume"),
    )


async def test_campaign_paused_over_the_weekend_sends_its_invitation_after_resume(
    stack: E2EStack, clock: DrivenClock, gateway: FakeLinkedInGateway
) -> None:
    seat = SEATS[1]
    cid = await _queued_friday_evening(stack, clock, gateway, seat)
    paused = await stack.api("POST", "/api/campaigns/invite-first/pause", {"reason": "weekend"})
    assert paused.status_code == 200, paused.text
    await _held_then_sent_after(
        stack,
        clock,
        gateway,
        seat,
        cid,
        lambda: stack.api("POST", "/api/campaigns/invite-first/resume"),
    )


async def test_hand_sent_message_over_rest_then_resume_moves_sequence_on(
    stack: E2EStack, clock: DrivenClock, gateway: FakeLinkedInGateway
) -> None:
    """Paused over the weekend, its invitation held; on Monday a person writes to the lead by
    hand (``POST .../send``) and resumes it: the hand-sent message stands in for the
    invitation, which is never sent, and the sequence goes on to wait for the lead."""
    seat = SEATS[2]
    cid = await _queued_friday_evening(stack, clock, gateway, seat)
    paused = await stack.api("POST", f"/api/conversations/{cid}/pause")
    assert paused.status_code == 200, paused.text
    clock.set_offset(MONDAY_0905 - datetime.now(UTC))

    async def held() -> bool:
        action = await _invitation(stack, cid)
        return action is not None and action.queue == "paused"

    await eventually("the invitation held while paused", held, 60)
    sent = await stack.api("POST", f"/api/conversations/{cid}/send", {"text": "Hi, Ana here"})
    assert sent.status_code == 200 and sent.json()["sent"] is True, sent.text
    resumed = await stack.api("POST", f"/api/conversations/{cid}/resume")
    assert resumed.status_code == 200, resumed.text

    async def moved_on() -> bool:
        shown = (await stack.api("GET", f"/api/conversations/{cid}")).json()
        return bool(shown["current_node"] == "wait_accept" and shown["waiting_for"] == "reply")

    await eventually("the taken-over node left for wait_accept", moved_on, 120)
    invitation = await _invitation(stack, cid)
    assert invitation is not None and (invitation.status, invitation.outcome) == (
        "done",
        "skipped",
    )
    performed = [(a.kind, a.text) for a in gateway.performed if a.account_id == seat]
    assert performed == [("message", "Hi, Ana here")]
