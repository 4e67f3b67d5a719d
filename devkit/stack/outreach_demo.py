"""``parley outreach-demo``: the outreach campaign for N leads on one LinkedIn seat, one verdict.

It uses a running ``parley dev`` when one answers on the webhook port (and wrote where its fake
LinkedIn gateway and loopback SMTP server are), else it brings the same stack up itself and
stops it afterwards (``--keep`` leaves it running). Then, over the REST API like an operator:

1. a fresh seat at the fake gateway and an identity for it (the seat's mailbox on the loopback
   SMTP server for the email fallback), open around the clock so it may act now, visits spaced
   1 s, connection requests spaced 2 s and capped at half the leads a day;
2. N leads started on the ``outreach`` campaign (``POST /api/conversations``);
3. it waits until the dispatcher visited every profile and sent exactly the day's cap of
   connection requests, the rest waiting for tomorrow's window; then one invited lead accepts
   (the gateway's signed webhook) and must get the LinkedIn message at once, not after the
   three-day wait; and one lead whose request is still queued replies, and its conversation
   must stop there with nothing more sent to it.

The report: actions per type (Parley's table and what the gateway saw), the smallest gap
between two sends of a type against its spacing, the Prefect concurrency limit ``identity-{id}``
and what ``parley identity show`` says. Exit 0 only if all of it is as expected. The clock is the
real one (or the stack's driven clock, if ``PARLEY_CLOCK_FILE`` is set): the demo takes about
``2 s x cap`` plus the runs' start-up time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from devkit.stack.dev import OutreachFakes, RunningStack, bring_up, prefect_port
from devkit.stack.processes import StackError, api_is_healthy
from parley.channels.base import InboundBatch, InboundMessage, InboundRole
from parley.clock import clock_from
from parley.conversation import inbox, operator_views
from parley.db import Database
from parley.db.models import Action, utcnow
from parley.outreach import identities
from parley.settings import Settings, get_settings

console = Console()
CAMPAIGN = "outreach"
VISIT, CONNECTION = "linkedin_profile_visit", "linkedin_connection"
MESSAGE = "linkedin_message"
SPACING = {VISIT: timedelta(seconds=1), CONNECTION: timedelta(seconds=2)}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Demo:
    settings: Settings
    fakes: OutreachFakes
    prefect_api: str
    leads: int
    checks: list[Check]
    progress_at: float = 0.0

    @property
    def cap(self) -> int:
        return max(1, self.leads // 2)

    @property
    def api(self) -> str:
        return f"{self.settings.webhook_url}/api"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key_list[0]}"}

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(what, ok, detail))
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        console.print(f"  {mark} {what}" + (f" [dim]({detail})[/]" if detail else ""))
        return ok


def _webhook_up(settings: Settings) -> bool:
    try:
        return httpx.get(f"{settings.webhook_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_outreach_demo(*, leads: int = 20, keep: bool = False) -> int:
    settings = get_settings()
    data_dir = Path(settings.data_dir)
    running: RunningStack | None = None
    fakes = OutreachFakes.read(data_dir) if _webhook_up(settings) else None
    if _webhook_up(settings) and fakes is None:
        console.print(
            f"[red]a webhook answers at {settings.webhook_url} but it is not a `parley dev` "
            f"with outreach fakes (no {data_dir}/dev-outreach.json); stop it or set "
            "PARLEY_WEBHOOK_PORT[/]"
        )
        return 2
    if fakes is not None:
        console.print(f"[dim]using the running `parley dev` at {settings.webhook_url}[/]")
        prefect_api = os.environ.get("PREFECT_API_URL") or (
            f"http://127.0.0.1:{prefect_port()}/api"
        )
    else:
        console.print("[dim]no `parley dev` running: starting the stack[/]")
        try:
            running = bring_up(settings)
        except StackError as exc:
            console.print(f"[red]cannot start: {exc}[/]")
            return 2
        fakes = running.outreach
        assert fakes is not None and running.stack.api_url
        prefect_api = running.stack.api_url
    try:
        if not fakes.gateway_url or not fakes.smtp_host:
            console.print("[red]the stack has no LinkedIn gateway or SMTP server[/]")
            return 1
        demo = Demo(settings, fakes, prefect_api, leads, [])
        ok = asyncio.run(_play(demo))
        console.print("[bold green]outreach demo passed[/]" if ok else "[bold red]FAILED[/]")
        if keep and running is not None:
            console.print(
                f"Stack left running: Prefect UI {running.ui_url}, webhook "
                f"{settings.webhook_url}. Stop it with Ctrl-C."
            )
            _wait_forever()
        return 0 if ok else 1
    finally:
        if running is not None:
            running.stop()


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return


# --- the scenario -------------------------------------------------------------------------------


async def _play(demo: Demo) -> bool:
    db = Database(demo.settings.resolved_database_url)
    try:
        async with httpx.AsyncClient(timeout=30, headers=demo.headers) as http:
            seat, identity_id = await _identity(demo, http)
            console.print(f"identity [bold]{identity_id}[/]: LinkedIn seat {seat}")
            profiles = await _start_leads(demo, http, identity_id, seat)
            if not profiles:
                return False
            started = time.monotonic()
            done = await _wait(lambda: _caught_up(demo, db, identity_id), 120 + 8 * demo.leads)
            console.print(f"[dim]dispatcher caught up in {time.monotonic() - started:.0f} s[/]")
            demo.check(
                f"{demo.leads} visits and {demo.cap} connection requests sent, the rest queued",
                done,
            )
            await _accepted(demo, db, http, identity_id, seat, profiles)
            await _replied(demo, db, http, identity_id, seat, profiles)
            await _report(demo, db, http, identity_id, seat)
    finally:
        await db.dispose()
    return all(check.ok for check in demo.checks)


async def _identity(demo: Demo, http: httpx.AsyncClient) -> tuple[str, int]:
    fakes = demo.fakes
    seat = f"outreach-demo-{secrets.token_hex(3)}"
    added = await http.post(f"{fakes.gateway_url}/_fake/accounts", json={"account_id": seat})
    added.raise_for_status()
    policy = {
        "working_hours": {"weekly": {day: ["00:00-24:00"] for day in DAYS}},
        "limits": {
            "actions": {
                VISIT: {"spacing": "1s"},
                CONNECTION: {"daily": demo.cap, "spacing": "2s"},
            }
        },
    }
    settings = {
        "account_id": seat,
        "gateway_url": fakes.gateway_url,
        "api_key": fakes.gateway_api_key,
        "email": {
            "address": f"{seat}@parley.example",
            "smtp_host": fakes.smtp_host,
            "smtp_port": fakes.smtp_port,
            "starttls": False,
        },
    }
    body = {
        "channel": "linkedin",
        "address": seat,
        "name": "Outreach demo seat",
        "timezone": "UTC",
        "policy": policy,
        "settings": settings,
    }
    response = await http.post(f"{demo.api}/identities", json=body)
    response.raise_for_status()
    return seat, int(response.json()["id"])


async def _start_leads(
    demo: Demo, http: httpx.AsyncClient, identity_id: int, seat: str
) -> dict[int, str]:
    """Conversation id -> the lead's profile URL."""
    profiles: dict[int, str] = {}
    for n in range(1, demo.leads + 1):
        profile = f"https://www.linkedin.com/in/{seat}-lead-{n}"
        body = {
            "campaign": CAMPAIGN,
            "identity_id": identity_id,
            "channel": "linkedin",
            "address": profile,
            "name": f"Lead {n}",
            "fields": {"email": f"lead{n}@{seat}.example"},
            "variables": {"first_name": f"Lead{n}"},
        }
        response = await http.post(f"{demo.api}/conversations", json=body)
        if response.status_code != 201:
            demo.check(f"lead {n} started", False, f"{response.status_code} {response.text}")
            return {}
        profiles[int(response.json()["id"])] = profile
    demo.check(f"{demo.leads} leads started over POST /api/conversations", True)
    return profiles


async def _actions(db: Database, identity_id: int) -> list[Action]:
    async with db.read() as session:
        rows = await session.execute(
            select(Action).where(Action.identity_id == identity_id).order_by(Action.id)
        )
        return list(rows.scalars())


async def _caught_up(demo: Demo, db: Database, identity_id: int) -> bool:
    rows = await _actions(db, identity_id)
    sent = Counter(a.type for a in rows if a.outcome == "sent")
    waiting = [a for a in rows if a.type == CONNECTION and a.status == "queued" and a.reason]
    now = time.monotonic()
    if now - demo.progress_at >= 15:
        demo.progress_at = now
        console.print(
            f"[dim]  so far: {sent[VISIT]} visits, {sent[CONNECTION]} connection requests, "
            f"{len(waiting)} put off[/]"
        )
    return (
        sent[VISIT] == demo.leads
        and sent[CONNECTION] == demo.cap
        and len(waiting) == demo.leads - demo.cap
    )


async def _wait(condition: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.5)
    return False


async def _replied(
    demo: Demo,
    db: Database,
    http: httpx.AsyncClient,
    identity_id: int,
    seat: str,
    profiles: dict[int, str],
) -> None:
    """A lead whose connection request is still queued writes: the sequence stops there."""
    queued = [
        a.conversation_id
        for a in await _actions(db, identity_id)
        if a.type == CONNECTION and a.status == "queued" and a.conversation_id in profiles
    ]
    if not queued:
        return
    conversation_id = queued[-1]
    assert conversation_id is not None
    profile = profiles[conversation_id]
    how = await _deliver_reply(demo, db, http, seat, profile, conversation_id)

    async def stopped() -> bool:
        detail = await operator_views.show_conversation(db, conversation_id)
        return bool(detail["status"] == "completed" and detail["current_node"] == "stopped")

    ok = await _wait(stopped, 60)
    to_lead = await _gateway_did_to(demo, http, profile)
    demo.check(
        f"lead of conversation {conversation_id} replied ({how}): stopped, nothing more sent",
        ok and to_lead == ["profile_visit"],
        f"gateway did {to_lead} to it",
    )


async def _accepted(
    demo: Demo,
    db: Database,
    http: httpx.AsyncClient,
    identity_id: int,
    seat: str,
    profiles: dict[int, str],
) -> None:
    """A lead accepts the invitation: its three-day wait ends at once with the LinkedIn
    message (the gateway's signed webhook sets ``linkedin_connected``, which the wait's edge
    asks: ``when: connection_accepted``), while the other invited leads keep waiting."""
    invited = [
        a.conversation_id
        for a in await _actions(db, identity_id)
        if a.type == CONNECTION and a.outcome == "sent" and a.conversation_id in profiles
    ]
    if not invited or not demo.fakes.gateway_webhook_url:
        return
    conversation_id = invited[0]
    assert conversation_id is not None
    profile = profiles[conversation_id]
    answer = await http.post(
        f"{demo.fakes.gateway_url}/_fake/accept-invitation",
        json={"account_id": seat, "profile": profile},
    )
    delivered = answer.status_code == 200 and bool(answer.json().get("delivered"))

    async def messaged() -> bool:
        rows = await _actions(db, identity_id)
        return any(
            a.conversation_id == conversation_id and a.type == MESSAGE and a.outcome == "sent"
            for a in rows
        )

    ok = delivered and await _wait(messaged, 60)
    to_lead = await _gateway_did_to(demo, http, profile)
    demo.check(
        f"lead of conversation {conversation_id} accepted: messaged at once, not in 3 days",
        ok and to_lead == ["profile_visit", "invitation", "message"],
        f"webhook delivered: {delivered}; gateway did {to_lead} to it",
    )


async def _gateway_did_to(demo: Demo, http: httpx.AsyncClient, profile: str) -> list[str]:
    """What the fake gateway performed towards one lead, in order."""
    performed = (await http.get(f"{demo.fakes.gateway_url}/_fake/actions")).json()
    return [a["kind"] for a in performed if a["to"] == profile]


async def _deliver_reply(
    demo: Demo,
    db: Database,
    http: httpx.AsyncClient,
    seat: str,
    profile: str,
    conversation_id: int,
) -> str:
    """Through the gateway's signed webhook when the stack has the route, else straight into
    the inbox (what that route would store)."""
    text = "Thanks, happy to talk, but not through a sequence please."
    if demo.fakes.gateway_webhook_url:
        paths = (await http.get(f"{demo.settings.webhook_url}/openapi.json")).json()["paths"]
        if "/webhooks/linkedin" in paths:
            answer = await http.post(
                f"{demo.fakes.gateway_url}/_fake/deliver-message",
                json={"account_id": seat, "from_profile": profile, "text": text},
            )
            if answer.status_code == 200 and answer.json().get("delivered"):
                return "a signed gateway webhook"
    message = InboundMessage(
        channel="linkedin",
        provider_message_id=f"demo-reply-{secrets.token_hex(4)}",
        identity_address=seat,
        contact_address=profile,
        contact_name=None,
        type="text",
        role=InboundRole.ANSWER,
        text=text,
        reply_id=None,
        context_message_id=None,
        timestamp=utcnow(),
        raw={},
    )
    await inbox.store_batch(db, InboundBatch(messages=[message]), CAMPAIGN)
    return "stored in the inbox; the dispatcher resumes its run"


async def _report(
    demo: Demo, db: Database, http: httpx.AsyncClient, identity_id: int, seat: str
) -> None:
    rows = await _actions(db, identity_id)
    gateway = (await http.get(f"{demo.fakes.gateway_url}/_fake/actions")).json()
    seen = Counter(a["kind"] for a in gateway if a["account_id"] == seat)
    table = Table("action", "sent", "queued", "skipped", "gateway saw", "min gap", "spacing")
    by_type: dict[str, list[Action]] = {}
    for action in rows:
        by_type.setdefault(action.type, []).append(action)
    gaps_ok = True
    gateway_kind = {VISIT: "profile_visit", CONNECTION: "invitation", MESSAGE: "message"}
    for kind, actions in sorted(by_type.items()):
        times = sorted(a.performed_at for a in actions if a.performed_at is not None)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        smallest = min(gaps) if gaps else None
        spacing = SPACING.get(kind, timedelta(seconds=60))
        gaps_ok = gaps_ok and (smallest is None or smallest >= spacing)
        table.add_row(
            kind,
            str(sum(a.outcome == "sent" for a in actions)),
            str(sum(a.status == "queued" for a in actions)),
            str(sum(a.outcome == "skipped" for a in actions)),
            str(seen.get(gateway_kind.get(kind, kind), 0)),
            f"{smallest.total_seconds():.2f} s" if smallest is not None else "-",
            f"{spacing.total_seconds():.0f} s",
        )
    console.print(table)
    demo.check("every gap between two sends of a type is at least its spacing", gaps_ok)
    demo.check(
        "the gateway performed exactly what Parley recorded as sent",
        seen.get("profile_visit", 0) == demo.leads and seen.get("invitation", 0) == demo.cap,
        f"{dict(seen)}",
    )
    limit_name = f"{demo.settings.identity_limit_prefix}{identity_id}"
    demo.check(
        f"Prefect global concurrency limit {limit_name} exists",
        await _limit_exists(demo.prefect_api, limit_name),
    )
    shown = subprocess.run(
        [sys.executable, "-m", "parley", "identity", "show", str(identity_id)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    console.print(f"[bold]$ parley identity show {identity_id}[/]")
    console.print(shown.stdout.rstrip(), markup=False, highlight=False)
    clock = clock_from(demo.settings.clock_file)
    detail = await identities.explain(db, identity_id, clock=clock)
    usage = detail["usage"].get(CONNECTION, {})
    reason = (detail["next_action"] or {}).get("reason") or ""
    demo.check(
        "identity show explains the wait: the daily cap of connection requests, and when",
        shown.returncode == 0
        and "daily cap" in reason
        and usage.get("today") == demo.cap
        and detail["status"]["until"] is not None,
        detail["status"]["state"],
    )


async def _limit_exists(prefect_api: str, name: str) -> bool:
    """Read over Prefect's REST API: ``parley/`` does not import Prefect."""
    if not api_is_healthy(prefect_api):
        return False
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{prefect_api}/v2/concurrency_limits/{name}")
    return response.status_code == 200 and response.json().get("limit") == 1
