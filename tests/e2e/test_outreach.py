"""The outreach campaign end to end: 20 leads on one LinkedIn seat, started over the REST API,
on a real stack (worker, webhook, dispatcher, Prefect server) against the loopback LinkedIn
gateway and SMTP server, on a driven clock.

The seat may act Mon-Fri 09:00-17:00 UTC and send 5 connection requests a day: on a Friday
afternoon every profile is visited and exactly 5 requests go out, the weekend sends nothing,
and Monday morning brings the next 5. A lead who replies while its request is queued gets
nothing more: its conversation stops and the queued request is skipped when it comes up."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from sqlalchemy import select

from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.fakes.smtp_server import LoopbackSMTPServer
from parley.channels.base import InboundBatch, InboundMessage, InboundRole
from parley.clock import DrivenClock
from parley.conversation import inbox
from parley.db import Database
from parley.db.models import Action, utcnow
from tests.e2e.conftest import ROOT, E2EStack, eventually

pytestmark = pytest.mark.e2e

OUTREACH = ROOT / "examples" / "campaigns" / "outreach.yaml"
SEAT = "seat-e2e"
SECRET = "test-linkedin-webhook-secret"
LEADS = 20
DAILY_CONNECTIONS = 5
CONNECTION_SPACING = timedelta(seconds=1)
FRIDAY_15 = datetime(2026, 12, 11, 15, 0, tzinfo=UTC)
SATURDAY_12 = datetime(2026, 12, 12, 12, 0, tzinfo=UTC)
MONDAY_0901 = datetime(2026, 12, 14, 9, 1, tzinfo=UTC)
POLICY = {
    "working_hours": {"weekly": {d: ["09:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")}},
    "limits": {
        "actions": {
            "linkedin_profile_visit": {"spacing": "0s"},
            "linkedin_connection": {"daily": DAILY_CONNECTIONS, "spacing": "1s"},
        }
    },
}


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> DrivenClock:
    return DrivenClock(tmp_path_factory.mktemp("outreach-clock") / "offset")


@pytest.fixture(scope="module")
def gateway() -> Iterator[FakeLinkedInGateway]:
    fake = FakeLinkedInGateway(accounts=(SEAT,), webhook_secret=SECRET)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def smtp() -> Iterator[LoopbackSMTPServer]:
    server = LoopbackSMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def outreach_stack(
    stack_factory: Any, clock: DrivenClock, gateway: FakeLinkedInGateway
) -> E2EStack:
    stack: E2EStack = stack_factory(
        "postgresql",
        hot_wait=1.0,
        campaign=OUTREACH,
        extra_env={
            "PARLEY_CLOCK_FILE": str(clock.path),
            "PARLEY_LINKEDIN_WEBHOOK_SECRET": SECRET,
        },
    )
    gateway.webhook_url = stack.webhook_url.replace("/webhooks/whatsapp", "/webhooks/linkedin")
    return stack


async def _actions(stack: E2EStack, identity_id: int) -> list[Action]:
    db = Database(stack.db_url)
    try:
        async with db.read() as session:
            rows = await session.execute(
                select(Action).where(Action.identity_id == identity_id).order_by(Action.id)
            )
            return list(rows.scalars())
    finally:
        await db.dispose()


def _kinds(gateway: FakeLinkedInGateway, kind: str) -> list[str]:
    return [a.to for a in gateway.performed if a.account_id == SEAT and a.kind == kind]


def _within_hours(at: datetime) -> bool:
    return at.weekday() < 5 and 9 <= at.hour < 17


async def _reply(stack: E2EStack, gateway: FakeLinkedInGateway, profile: str) -> None:
    """Through the gateway's signed webhook once the stack has the route; until then stored in
    the inbox the way that route would (the dispatcher's sweep resumes the run)."""
    paths = (await stack.api("GET", "/openapi.json")).json()["paths"]
    if "/webhooks/linkedin" in paths:
        assert gateway.deliver_message(SEAT, profile, "Not interested, thanks").wait(15)
        return
    message = InboundMessage(
        channel="linkedin",
        provider_message_id=f"li-reply-{profile.rsplit('-', 1)[-1]}",
        identity_address=SEAT,
        contact_address=profile,
        contact_name=None,
        type="text",
        role=InboundRole.ANSWER,
        text="Not interested, thanks",
        reply_id=None,
        context_message_id=None,
        timestamp=utcnow(),
        raw={},
    )
    db = Database(stack.db_url)
    try:
        await inbox.store_batch(db, InboundBatch(messages=[message]), "outreach")
    finally:
        await db.dispose()


async def test_twenty_leads_on_one_seat_within_working_hours_and_the_daily_cap(
    outreach_stack: E2EStack,
    clock: DrivenClock,
    gateway: FakeLinkedInGateway,
    smtp: LoopbackSMTPServer,
) -> None:
    stack = outreach_stack
    clock.set_offset(FRIDAY_15 - datetime.now(UTC))
    seat_settings = {
        **gateway.sender(SEAT).settings,
        "email": {"address": "seat@parley.example", **smtp.smtp_settings()},
    }
    added = await stack.api(
        "POST",
        "/api/identities",
        {"channel": "linkedin", "address": SEAT, "policy": POLICY, "settings": seat_settings},
    )
    assert added.status_code == 201, added.text
    identity_id = added.json()["id"]

    profiles: dict[int, str] = {}
    for n in range(1, LEADS + 1):
        profile = f"https://www.linkedin.com/in/e2e-lead-{n}"
        started = await stack.api(
            "POST",
            "/api/conversations",
            {
                "campaign": "outreach",
                "identity_id": identity_id,
                "channel": "linkedin",
                "address": profile,
                "name": f"Lead {n}",
                "fields": {"email": f"lead{n}@example.com"},
                "variables": {"first_name": f"Lead{n}"},
            },
        )
        assert started.status_code == 201, started.text
        assert started.json()["run"] == "start" and started.json()["run_reached"] is True
        profiles[started.json()["id"]] = profile
    lead = {"campaign": "outreach", "identity_id": identity_id, "address": profiles[1]}
    again = await stack.api(
        "POST", "/api/conversations", {**lead, "variables": {"first_name": "A"}}
    )
    assert again.status_code == 409, again.text  # already has an active conversation
    unknown = await stack.api(
        "POST", "/api/conversations", {**lead, "identity_id": 999_999, "address": "x"}
    )
    assert unknown.status_code == 404, unknown.text
    no_inputs = await stack.api("POST", "/api/conversations", {**lead, "address": "new"})
    assert no_inputs.status_code == 422 and "first_name" in no_inputs.text

    # Friday afternoon: every profile visited, exactly the day's 5 connection requests; the
    # dispatcher looks at the rest one by one and puts each off until Monday's window.
    monday_09 = MONDAY_0901.replace(minute=0)

    async def friday_done() -> bool:
        rows = await _actions(stack, identity_id)
        capped = [a for a in rows if a.type == "linkedin_connection" and a.status == "queued"]
        return (
            len(_kinds(gateway, "profile_visit")) == LEADS
            and len(_kinds(gateway, "invitation")) == DAILY_CONNECTIONS
            and len(capped) == LEADS - DAILY_CONNECTIONS
            and all(a.not_before == monday_09 for a in capped)
        )

    started = time.monotonic()
    await eventually("20 visits, 5 connection requests, the rest put off", friday_done, 240)
    print(f"Friday's work took {time.monotonic() - started:.1f} s")
    rows = await _actions(stack, identity_id)
    capped = [a for a in rows if a.type == "linkedin_connection" and a.status == "queued"]
    assert all("daily cap" in (a.reason or "") for a in capped), capped[0].reason
    sent = [a for a in rows if a.outcome == "sent"]
    assert sent and all(a.performed_at and _within_hours(a.performed_at) for a in sent)
    requests = sorted(
        a.performed_at for a in sent if a.type == "linkedin_connection" and a.performed_at
    )
    assert all(b - a >= CONNECTION_SPACING for a, b in itertools.pairwise(requests))
    for kind in ("profile_visit", "invitation"):
        assert len(set(_kinds(gateway, kind))) == len(_kinds(gateway, kind))  # none twice

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(
            f"{stack.env['PARLEY_IDENTITY_LIMIT_PREFIX']}{identity_id}"
        )
    assert limit.limit == 1

    shown = await stack.api("GET", f"/api/identities/{identity_id}")
    assert shown.status_code == 200, shown.text
    explained = shown.json()
    assert explained["status"]["until"] == monday_09.isoformat(), explained["status"]
    assert "daily cap" in explained["next_action"]["reason"], explained["next_action"]
    assert explained["usage"]["linkedin_connection"]["today"] == DAILY_CONNECTIONS

    # A lead whose request is still queued replies: its conversation stops there.
    replying = capped[0]
    assert replying.conversation_id is not None
    profile = profiles[replying.conversation_id]
    await _reply(stack, gateway, profile)

    async def stopped() -> bool:
        detail = await stack.api("GET", f"/api/conversations/{replying.conversation_id}")
        body = detail.json()
        return bool(body["status"] == "completed" and body["current_node"] == "stopped")

    await eventually("the replying lead's conversation stopped", stopped, 60)

    # The weekend: nothing.
    clock.set_offset(SATURDAY_12 - datetime.now(UTC))
    await asyncio.sleep(3)
    assert len(_kinds(gateway, "invitation")) == DAILY_CONNECTIONS

    # Monday 09:01: the next 5; the replying lead's request is skipped, not sent.
    clock.set_offset(MONDAY_0901 - datetime.now(UTC))

    async def monday_done() -> bool:
        return len(_kinds(gateway, "invitation")) == 2 * DAILY_CONNECTIONS

    await eventually("Monday's 5 connection requests", monday_done, 120)
    await asyncio.sleep(2)
    assert len(_kinds(gateway, "invitation")) == 2 * DAILY_CONNECTIONS
    skipped = {a.id: a for a in await _actions(stack, identity_id)}[replying.id]
    assert (skipped.status, skipped.outcome) == ("done", "skipped"), skipped.reason
    assert [a.kind for a in gateway.actions_to(profile)] == ["profile_visit"]
    monday = [
        a
        for a in await _actions(stack, identity_id)
        if a.type == "linkedin_connection" and a.outcome == "sent" and a.performed_at
    ]
    assert sum(a.performed_at >= monday_09 for a in monday if a.performed_at) == DAILY_CONNECTIONS


# --- past the three-day wait: acceptance, the email fallback and its errors -------------------
# Fresh seats, open around the clock, on the same stack; the clock is moved three days on
# instead of waited for. Each lead is its own case, all four in flight at once:
#   accepted  — accepts the invitation (the gateway's signed webhook): its wait ends at once
#               and the LinkedIn message goes out, three days early;
#   quiet     — never accepts: the message is refused (not a connection), the email goes out
#               through the loopback SMTP server with our Message-ID;
#   refused   — the same, but the mailbox's server refuses the recipient (550 5.1.1): the
#               conversation completes with that reason;
#   throttled — the same, but the server answers 451 (greylisted, try again in 60 seconds)
#               once: the mailbox waits that long, then the email is retried and sent once.

TUESDAY_10 = datetime(2026, 12, 15, 10, 0, tzinfo=UTC)
ALWAYS_OPEN = {
    "working_hours": {
        "weekly": {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
    },
    "limits": {
        "actions": {
            kind: {"spacing": "0s"}
            for kind in (
                "linkedin_profile_visit",
                "linkedin_connection",
                "linkedin_message",
                "email",
            )
        }
    },
}


@pytest.fixture(scope="module")
def refusing_smtp() -> Iterator[LoopbackSMTPServer]:
    server = LoopbackSMTPServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def throttling_smtp() -> Iterator[LoopbackSMTPServer]:
    server = LoopbackSMTPServer()
    server.start()
    yield server
    server.stop()


async def _seat(
    stack: E2EStack, gateway: FakeLinkedInGateway, seat: str, smtp: LoopbackSMTPServer
) -> int:
    gateway.add_account(seat)
    settings = {
        **gateway.sender(seat).settings,
        "email": {"address": f"{seat}@parley.example", **smtp.smtp_settings()},
    }
    added = await stack.api(
        "POST",
        "/api/identities",
        {"channel": "linkedin", "address": seat, "policy": ALWAYS_OPEN, "settings": settings},
    )
    assert added.status_code == 201, added.text
    return int(added.json()["id"])


async def _start_lead(stack: E2EStack, identity_id: int, name: str) -> tuple[int, str, str]:
    profile, email = f"https://www.linkedin.com/in/e2e-{name}", f"{name}@example.com"
    started = await stack.api(
        "POST",
        "/api/conversations",
        {
            "campaign": "outreach",
            "identity_id": identity_id,
            "channel": "linkedin",
            "address": profile,
            "name": name.title(),
            "fields": {"email": email},
            "variables": {"first_name": name.title()},
        },
    )
    assert started.status_code == 201, started.text
    return int(started.json()["id"]), profile, email


async def _detail(stack: E2EStack, conversation_id: int) -> dict[str, Any]:
    shown = await stack.api("GET", f"/api/conversations/{conversation_id}")
    assert shown.status_code == 200, shown.text
    body: dict[str, Any] = shown.json()
    return body


async def _at(stack: E2EStack, conversation_id: int, node: str, status: str | None = None) -> bool:
    detail = await _detail(stack, conversation_id)
    wait = detail.get("wait") or {}
    if status is not None:
        return bool(detail["status"] == status and detail["current_node"] == node)
    # Sleeping there: for a reply (wait_message, wait_mail) or for acceptance or the clock
    # (wait_accept) — not at a send node waiting for its action's outcome.
    return bool(detail["current_node"] == node and wait.get("kind") in ("reply", "timer"))


async def _actions_of(stack: E2EStack, conversation_id: int) -> list[Action]:
    db = Database(stack.db_url)
    try:
        async with db.read() as session:
            rows = await session.execute(
                select(Action).where(Action.conversation_id == conversation_id).order_by(Action.id)
            )
            return list(rows.scalars())
    finally:
        await db.dispose()


def _by_type(rows: list[Action]) -> dict[str, list[tuple[str, str | None]]]:
    out: dict[str, list[tuple[str, str | None]]] = {}
    for row in rows:
        out.setdefault(row.type, []).append((row.status, row.outcome))
    return out


async def _snapshot(stack: E2EStack, leads: tuple[int, ...]) -> str:
    """Where each lead is, for a failure's message."""
    lines = []
    for lead in leads:
        detail = await _detail(stack, lead)
        rows = await _actions_of(stack, lead)
        done = [(a.type, a.status, a.outcome, (a.reason or "")[:60]) for a in rows]
        lines.append(f"{lead}: {detail['status']} at {detail['current_node']} {detail['wait']}")
        lines.append(f"    {done}")
    return "\n".join(lines)


@pytest.mark.timeout(480)  # a stack of its own when run alone, and four leads on 2 loaded cores
async def test_past_the_three_day_wait_acceptance_the_email_fallback_and_its_errors(
    outreach_stack: E2EStack,
    clock: DrivenClock,
    gateway: FakeLinkedInGateway,
    smtp: LoopbackSMTPServer,
    refusing_smtp: LoopbackSMTPServer,
    throttling_smtp: LoopbackSMTPServer,
) -> None:
    stack = outreach_stack
    clock.set_offset(TUESDAY_10 - datetime.now(UTC))
    seat_ok = await _seat(stack, gateway, "seat-e2e-wait", smtp)
    seat_refusing = await _seat(stack, gateway, "seat-e2e-refusing", refusing_smtp)
    seat_throttled = await _seat(stack, gateway, "seat-e2e-throttled", throttling_smtp)
    accepted, accepted_profile, accepted_email = await _start_lead(stack, seat_ok, "accepting")
    quiet, quiet_profile, quiet_email = await _start_lead(stack, seat_ok, "quiet")
    refused, _, refused_email = await _start_lead(stack, seat_refusing, "refused")
    throttled, _, throttled_email = await _start_lead(stack, seat_throttled, "throttled")
    leads = (accepted, quiet, refused, throttled)

    async def until(what: str, ready: Callable[[], Awaitable[bool]], timeout: float) -> None:
        try:
            await eventually(what, ready, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await _snapshot(stack, leads)}") from None

    async def all_invited() -> bool:
        return all([await _at(stack, lead, "wait_accept") for lead in leads])

    await until("every lead visited, invited and waiting to accept", all_invited, 120)
    assert [a.kind for a in gateway.actions_to(accepted_profile)] == [
        "profile_visit",
        "invitation",
    ]
    refusing_smtp.fail_next(550, "5.1.1 <refused@example.com>: no such user here")
    throttling_smtp.fail_next(451, "4.7.1 greylisted, try again in 60 seconds")

    # (a) accepted: the acceptance ends its wait at once, not at the three-day mark — the
    # message goes out on the same (driven) day while the others still wait.
    assert gateway.accept_invitation("seat-e2e-wait", accepted_profile).wait(15)

    async def messaged_on_acceptance() -> bool:
        return await _at(stack, accepted, "wait_message")

    await until("the acceptance moved the lead on to the message", messaged_on_acceptance, 90)
    assert clock.now() < TUESDAY_10 + timedelta(days=1)
    for lead in (quiet, refused, throttled):
        assert await _at(stack, lead, "wait_accept"), await _snapshot(stack, leads)

    # Three days on: the other waits time out.
    clock.advance(timedelta(days=3, minutes=1))

    async def message_then_fallback() -> bool:
        return await _at(stack, quiet, "wait_mail") and await _at(
            stack, refused, "mail", status="completed"
        )

    await until("the message, the fallback, the refusal", message_then_fallback, 150)

    # (a) accepted: the LinkedIn message went out once, no email.
    kinds = [a.kind for a in gateway.actions_to(accepted_profile)]
    assert kinds == ["profile_visit", "invitation", "message"], kinds
    assert smtp.messages_to(accepted_email) == []
    assert _by_type(await _actions_of(stack, accepted))["linkedin_message"] == [("done", "sent")]

    # (b) quiet: the message was refused (not a connection), the email went out once, with
    # the Message-ID Parley recorded as the action's provider id.
    assert [a.kind for a in gateway.actions_to(quiet_profile)] == ["profile_visit", "invitation"]
    quiet_rows = _by_type(await _actions_of(stack, quiet))
    assert quiet_rows["linkedin_message"] == [("done", "failed")]
    assert quiet_rows["email"] == [("done", "sent")]
    [mail] = smtp.messages_to(quiet_email)
    message_id = mail.message["Message-ID"]
    assert message_id and message_id.startswith("<") and "@" in message_id
    assert mail.message["Subject"] == "Quick question, Quiet"
    [email_action] = [a for a in await _actions_of(stack, quiet) if a.type == "email"]
    assert email_action.provider_id is not None
    assert email_action.provider_id.strip("<>") == message_id.strip("<>")

    # (c) refused recipient: nothing accepted, the action failed with the server's words, and
    # the conversation completed with them.
    assert refusing_smtp.messages_to(refused_email) == []
    [refused_action] = [a for a in await _actions_of(stack, refused) if a.type == "email"]
    assert refused_action.outcome == "failed"
    assert refused_action.reason and "550" in refused_action.reason
    refused_detail = await _detail(stack, refused)
    assert "550" in (refused_detail["last_error"] or ""), refused_detail

    # (c') a 4xx is a throttle: queued again until the server's "try again in", then sent once
    # (the refused try does not count as an attempt).
    async def greylisted() -> bool:
        rows = [a for a in await _actions_of(stack, throttled) if a.type == "email"]
        return bool(rows and rows[0].status == "queued" and "451" in (rows[0].reason or ""))

    await until("the 451 put the email back in the queue", greylisted, 60)
    [waiting] = [a for a in await _actions_of(stack, throttled) if a.type == "email"]
    # Not before it is due: the server's 60 s from the try (claimed_at is on the real clock,
    # not_before on the driven one), however long this loaded machine took to look.
    assert waiting.claimed_at is not None
    offset = clock.now() - datetime.now(UTC)
    assert waiting.not_before >= waiting.claimed_at + offset + timedelta(seconds=55), waiting
    assert throttling_smtp.messages_to(throttled_email) == []
    clock.advance(timedelta(minutes=2))  # past the server's 60 seconds

    async def retried() -> bool:
        return await _at(stack, throttled, "wait_mail")

    await until("the greylisted email retried and sent", retried, 90)
    assert len(throttling_smtp.messages_to(throttled_email)) == 1
    [throttled_action] = [a for a in await _actions_of(stack, throttled) if a.type == "email"]
    assert (throttled_action.outcome, throttled_action.attempts) == ("sent", 1)
