"""``parley demo``: the whole stack on embedded defaults, three WhatsApp users, one verdict.

User 1 answers straight through; user 2 mistypes the email first; user 3 thinks for longer than
the hot window, so their run suspends (visible in the Prefect UI) and is resumed by the
webhook. The demo exits 0 only when all three transcripts are exactly what the bot should say.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from devkit.fakes.recording_endpoint import RecordingEndpoint
from devkit.fakes.whatsapp_user import WhatsAppUser
from devkit.stack.dev import RunningStack, bring_up
from parley.conversation import operator_views as views
from parley.db import Database
from parley.settings import Settings, get_settings
from parley.vocabulary import Status

console = Console()
DEMO_HOT_SECONDS = "3"
THINKING_SECONDS = 6.0

GREETING = "Hi, welcome aboard! What's your name?"
EMAIL_PROMPT = "Nice to meet you, {name}! What's your email address?"
EMAIL_RETRY = "That doesn't look like an email address. Please try again."
PLAN_PROMPT = "Which plan would you like, {name}?"
THANKS = "Thanks {name}, you're on {plan}."

Script = Callable[[WhatsAppUser], Awaitable[list[tuple[str, list[str]]]]]


def _expect(user: WhatsAppUser, got: list[str], wanted: str) -> tuple[str, list[str]]:
    ok = bool(got) and got[-1] == wanted
    mark = "[green]✓[/]" if ok else f"[red]✗ expected {wanted!r}[/]"
    for text in got:
        console.print(f"  [cyan]{user.name:>6}[/] ← bot: {escape(text)} {mark}")
    return wanted, got


async def _straight(user: WhatsAppUser) -> list[tuple[str, list[str]]]:
    checks = [_expect(user, await _say(user, "Hi"), GREETING)]
    checks.append(_expect(user, await _say(user, user.name), EMAIL_PROMPT.format(name=user.name)))
    checks.append(
        _expect(
            user,
            await _say(user, f"{user.name.lower()}@example.com"),
            PLAN_PROMPT.format(name=user.name),
        )
    )
    checks.append(
        _expect(
            user, await _press(user, "basic", "Basic"), THANKS.format(name=user.name, plan="Basic")
        )
    )
    return checks


async def _typo(user: WhatsAppUser) -> list[tuple[str, list[str]]]:
    checks = [_expect(user, await _say(user, "Hello"), GREETING)]
    checks.append(_expect(user, await _say(user, user.name), EMAIL_PROMPT.format(name=user.name)))
    checks.append(_expect(user, await _say(user, "bob at example"), EMAIL_RETRY))
    checks.append(
        _expect(user, await _say(user, "bob@example.com"), PLAN_PROMPT.format(name=user.name))
    )
    checks.append(_expect(user, await _say(user, "pro"), THANKS.format(name=user.name, plan="Pro")))
    return checks


async def _thinker(user: WhatsAppUser) -> list[tuple[str, list[str]]]:
    checks = [_expect(user, await _say(user, "Hey"), GREETING)]
    console.print(
        f"  [cyan]{user.name:>6}[/] … thinks for {THINKING_SECONDS:.0f} s "
        "(the run goes cold and suspends)"
    )
    await asyncio.sleep(THINKING_SECONDS)
    checks.append(_expect(user, await _say(user, user.name), EMAIL_PROMPT.format(name=user.name)))
    checks.append(
        _expect(user, await _say(user, "carol@example.org"), PLAN_PROMPT.format(name=user.name))
    )
    checks.append(
        _expect(user, await _press(user, "pro", "Pro"), THANKS.format(name=user.name, plan="Pro"))
    )
    return checks


async def _say(user: WhatsAppUser, text: str) -> list[str]:
    console.print(f"  [cyan]{user.name:>6}[/] → {escape(text)}")
    return await user.say(text)


async def _press(user: WhatsAppUser, reply_id: str, title: str) -> list[str]:
    console.print(f"  [cyan]{user.name:>6}[/] → " + escape(f"[button {title}]"))
    return await user.press(reply_id, title)


def _demo_environment() -> None:
    os.environ.setdefault("PARLEY_HOT_WAIT_SECONDS", DEMO_HOT_SECONDS)
    os.environ.setdefault("PARLEY_LEASE_SECONDS", "10")
    get_settings.cache_clear()


def _users(settings: Settings, running: RunningStack) -> list[WhatsAppUser]:
    assert running.fake_whatsapp is not None
    suffix = f"{secrets.randbelow(10**6):06d}"
    return [
        WhatsAppUser(
            phone=f"{prefix}{suffix}",
            name=name,
            webhook_url=f"{settings.webhook_url}/webhooks/whatsapp",
            app_secret=settings.whatsapp_app_secret.get_secret_value(),
            phone_number_id=settings.whatsapp_phone_number_id,
            fake=running.fake_whatsapp,
        )
        for prefix, name in (("3460011", "Alice"), ("4477009", "Bob"), ("1555012", "Carol"))
    ]


async def _play(settings: Settings, running: RunningStack) -> tuple[bool, list[WhatsAppUser]]:
    users = _users(settings, running)
    scripts: list[Script] = [_straight, _typo, _thinker]
    results = await asyncio.gather(
        *(script(user) for script, user in zip(scripts, users, strict=True)),
        return_exceptions=True,
    )
    ok = True
    for user, result in zip(users, results, strict=True):
        if isinstance(result, BaseException):
            console.print(f"[red]{user.name}: {result}[/]")
            ok = False
        else:
            ok &= all(got and got[-1] == wanted for wanted, got in result)
    return ok, users


async def _conversations_completed(settings: Settings, users: list[WhatsAppUser]) -> bool:
    db = Database(settings.resolved_database_url)
    try:
        deadline = time.monotonic() + 30
        phones = {u.phone for u in users}
        while time.monotonic() < deadline:
            rows = [r for r in await views.list_conversations(db) if r["contact"] in phones]
            if len(rows) == len(users) and all(r["status"] == Status.COMPLETED for r in rows):
                return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await db.dispose()


def _summary(users: list[WhatsAppUser], crm: RecordingEndpoint) -> list[float]:
    table = Table("user", "phone", "turns", "p50 latency", "max latency")
    latencies: list[float] = []
    for user in users:
        lat = [t.latency for t in user.turns]
        latencies.extend(lat)
        table.add_row(
            user.name,
            user.phone,
            str(len(lat)),
            f"{statistics.median(lat) * 1000:.0f} ms" if lat else "-",
            f"{max(lat) * 1000:.0f} ms" if lat else "-",
        )
    console.print(table)
    console.print(
        f"CRM received {len(crm.requests)} profile(s): "
        + ", ".join(str(r["json"]) for r in crm.requests)
    )
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_demo(*, keep: bool = False) -> int:
    _demo_environment()
    settings = get_settings()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    running = bring_up(settings, fake_providers=True)
    crm = running.endpoints["CRM_URL"]
    try:
        console.print(f"[green]stack is up[/]; Prefect UI at {running.ui_url}")
        ok, users = asyncio.run(_play(settings, running))
        ok = ok and asyncio.run(_conversations_completed(settings, users))
        ok = ok and len(crm.requests) == len(users)
        latencies = _summary(users, crm)
        if latencies:
            console.print(
                f"per-turn latency over {len(latencies)} turns: "
                f"p50 {_percentile(latencies, 0.5) * 1000:.0f} ms, "
                f"p95 {_percentile(latencies, 0.95) * 1000:.0f} ms "
                f"(hot window {settings.hot_wait_seconds:.0f} s)"
            )
        console.print("[bold green]demo passed[/]" if ok else "[bold red]demo FAILED[/]")
        if keep:
            console.print(
                f"Stack left running: Prefect UI {running.ui_url}, webhook "
                f"{settings.webhook_url}. Stop it with Ctrl-C."
            )
            _wait_forever()
        return 0 if ok else 1
    finally:
        running.stop()


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return
