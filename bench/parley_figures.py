"""Parley's own figures, all on one stack (``bench.parley_stack``): hot and cold turns, cold
start, throughput, replay cost, the webhook under a burst of new contacts, and the idle cost.

Each figure checks what it measured twice: the transcripts the users saw (``bench.harness``)
and Parley's own rows (``bench.probe``); a disagreement fails the figure instead of a number.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from statistics import median
from typing import Any

import httpx

from bench import parley_stack
from bench.breakdown import render as render_breakdowns
from bench.breakdown import turn_breakdowns
from bench.context import PARLEY_DB, PREFECT_DB, Context
from bench.harness import (
    Chat,
    FigureError,
    TimedFake,
    gather_limited,
    new_http,
    summary_ms,
    verify_transcripts,
)
from bench.onboarding import (
    finished,
    play_at_once,
    play_onboarding,
    user_name,
    verify_crm,
    watched,
)
from bench.parley_stack import ParleyStack
from bench.pg import writes_between
from bench.probe import Probe
from bench.procs import descendants, rss_kib
from bench.script import ECHO_BYE, ECHO_PROMPT, GREETING, echo_turn

HOT_COLD_KINDS = ("start", "hot", "cold", "hot")


def _chats(
    ctx: Context,
    stack: ParleyStack,
    figure: str,
    n: int,
    http: httpx.AsyncClient,
    *,
    echo: bool = False,
    timeout: float = 120.0,
    turn_lock: asyncio.Lock | None = None,
) -> list[Chat]:
    endpoint = stack.echo if echo else stack.onboarding
    chats = []
    for _ in range(n):
        phone = ctx.phones.phone(figure)
        chats.append(
            Chat(
                phone,
                user_name(phone),
                endpoint,
                stack.fake,
                http,
                timeout=timeout,
                turn_lock=turn_lock,
            )
        )
    return chats


# --- hot turn, cold turn, cold start ---------------------------------------------------------


def latency(ctx: Context) -> None:
    stack = parley_stack.started(ctx)
    meter = stack.meter(ctx)
    chats = asyncio.run(_latency(ctx, stack))
    ctx.report.add_cpu("latency", meter.stop())
    verify_crm("parley latency", stack.crm.requests, chats)


async def _latency(ctx: Context, stack: ParleyStack) -> list[Chat]:
    probe = await Probe.open(ctx, stack.api)
    writes_before = ctx.pg.table_writes(PREFECT_DB)
    try:
        async with new_http(16) as http:
            warmup = _chats(ctx, stack, "latency", 1, http)
            await play_onboarding(warmup[0])
            stack.echo_ready()  # started with the stack: up before any measured turn
            lock = asyncio.Lock()
            chats = _chats(ctx, stack, "latency", ctx.plan.latency_chats, http, turn_lock=lock)
            await gather_limited(
                ctx.plan.latency_at_once,
                [
                    play_onboarding(c, kinds=HOT_COLD_KINDS, before_email=probe.wait_suspended)
                    for c in chats
                ],
            )
            everyone = warmup + chats
            await verify_transcripts("parley latency", stack.fake, everyone, settle=1.0)
            await probe.verify("parley latency", everyone, "completed")
            runs = {c.phone: run for c in chats if (run := await probe.flow_run_of(c.phone))}
            breakdowns = await turn_breakdowns(chats, runs, stack.api)
            ctx.report.add("turn_breakdown", breakdowns)
            print("\n".join(render_breakdowns(breakdowns)), flush=True)
    finally:
        await probe.close()
    ctx.remember("parley latency", stack.fake, everyone)
    all_turns = sum(len(c.turns) for c in everyone)
    writes = writes_between(writes_before, ctx.pg.table_writes(PREFECT_DB), all_turns)
    ctx.report.add("prefect_rows_written_per_turn", dict(list(writes.items())[:8]))
    turns = [t for c in chats for t in c.turns]
    for key, kind in (("hot_turn_ms", "hot"), ("cold_turn_ms", "cold"), ("cold_start_ms", "start")):
        ctx.report.add(key, summary_ms([t.latency for t in turns if t.kind == kind]))
    return everyone


# --- throughput -----------------------------------------------------------------------------


def throughput(ctx: Context) -> None:
    """``throughput_budget_s`` bounds each size: a size that cannot finish in it is measured
    over the budget (see ``play_at_once``), and ``throughput_detail`` says so."""
    stack = parley_stack.started(ctx)
    result: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    lost = 0
    for size in ctx.plan.throughput_sizes:
        meter = stack.meter(ctx)
        chats: list[Chat] = []
        try:
            detail[str(size)] = asyncio.run(_throughput(ctx, stack, size, chats))
            verify_crm(f"parley throughput {size}", stack.crm.requests, finished(chats))
        except FigureError as exc:
            ctx.report.fail(f"throughput {size}", str(exc))
            result[str(size)] = None  # not reported: it lost or duplicated messages
            lost += missing_replies(stack.fake, chats)
            break  # a larger size would only fail the same way, slower
        finally:
            ctx.report.add_cpu(f"throughput {size}", meter.stop())
        result[str(size)] = detail[str(size)]["turns_per_s"]
        print(f"  {size} conversations at once: {detail[str(size)]}", flush=True)
    result["lost_messages"] = lost  # counted from the transcripts, not assumed
    ctx.report.add("throughput_turns_per_s", result)
    ctx.report.add("throughput_detail", detail)


def missing_replies(fake: TimedFake, chats: Sequence[Chat]) -> int:
    """Replies a user was owed (the bot's answers to what it sent) and never received."""
    return sum(max(0, len(c.expected) - len(fake.texts(c.phone))) for c in chats)


async def _throughput(
    ctx: Context, stack: ParleyStack, size: int, chats: list[Chat]
) -> dict[str, Any]:
    """``chats`` is filled in place, so a failed figure can still count what it lost."""
    probe = await Probe.open(ctx, stack.api)
    label = f"parley throughput {size}"
    try:
        async with new_http(size) as http:
            chats.extend(_chats(ctx, stack, f"load{size}", size, http, timeout=3600))
            result = await play_at_once(
                chats, budget=ctx.plan.throughput_budget_s, diagnose=lambda: probe.diagnose(chats)
            )
            await verify_transcripts(label, stack.fake, chats)
            done = finished(chats)
            await probe.verify(label, done, "completed")
            await probe.verify(label, [c for c in chats if c not in done])
    finally:
        await probe.close()
    ctx.remember(label, stack.fake, chats)
    return result


# --- replay: does a resume cost more after a long conversation? -------------------------------


def replay(ctx: Context) -> None:
    stack = parley_stack.started(ctx)
    stack.echo_ready()
    meter = stack.meter(ctx)
    asyncio.run(_replay(ctx, stack))
    ctx.report.add_cpu("replay", meter.stop())


async def _replay(ctx: Context, stack: ParleyStack) -> None:
    """All conversations chat (hot) up to each history length together; then, one at a time,
    each waits until its run is suspended and takes one cold turn (so cold samples never
    overlap). The cold turn's latency is the resume cost at that history."""
    histories = sorted(ctx.plan.replay_histories)
    probe = await Probe.open(ctx, stack.api)
    samples: dict[int, list[float]] = {h: [] for h in histories}
    try:
        async with new_http(8) as http:
            chats = _chats(ctx, stack, "replay", ctx.plan.replay_chats, http, echo=True)
            done = dict.fromkeys((c.phone for c in chats), 0)

            async def hot_until(chat: Chat, turns: int) -> None:
                while done[chat.phone] < turns:
                    msg = f"m{done[chat.phone] + 1}"
                    await chat.say(msg, echo_turn(msg), "hot")
                    done[chat.phone] += 1

            await asyncio.gather(*(c.say("Hi", [ECHO_PROMPT], "start") for c in chats))
            for history in histories:
                await asyncio.gather(*(hot_until(c, history) for c in chats))
                # All suspend together (one hot window), then the cold turns go one by one.
                await asyncio.gather(*(probe.wait_suspended(c) for c in chats))
                for chat in chats:
                    msg = f"m{done[chat.phone] + 1}"
                    turn = await chat.say(msg, echo_turn(msg), "cold")
                    done[chat.phone] += 1
                    samples[history].append(turn.latency)
                print(f"  cold resume after {history} turns: {samples[history]}", flush=True)
            await asyncio.gather(*(c.say("stop", [ECHO_BYE], "end") for c in chats))
            await verify_transcripts("parley replay", stack.fake, chats, settle=1.0)
            await probe.verify("parley replay", chats, "completed")
    finally:
        await probe.close()
    ctx.remember("parley replay", stack.fake, chats)
    value: dict[str, Any] = {str(h): round(median(s) * 1000, 1) for h, s in samples.items()}
    value["n"] = len(chats)
    ctx.report.add("resume_ms_by_history", value)
    ctx.report.add("hot_turn_ms_by_history", _hot_by_history(chats, histories))


def _hot_by_history(chats: list[Chat], histories: list[int]) -> dict[str, float]:
    """p50 of the (up to) ten hot turns just before each history length: does a live turn
    get slower as the run's history grows?"""
    out: dict[str, float] = {}
    for history in histories:
        window = [
            t.latency
            for c in chats
            for t in [x for x in c.turns if x.kind in ("hot", "cold")][
                max(0, history - 10) : history
            ]
            if t.kind == "hot"
        ]
        if window:
            out[str(history)] = round(median(window) * 1000, 1)
    return out


# --- new contacts: webhook ack under a burst, then what N suspended conversations cost ---------


def starts(ctx: Context) -> None:
    """A burst of new contacts (``webhook_contacts``, ``webhook_concurrency`` POSTs at once):
    time to the 200 and conversations greeted per second. Then more new contacts until
    ``idle_conversations`` are waiting (the burst's included), and once every one of them is
    suspended: the processes they hold and the database bytes each costs."""
    stack = parley_stack.started(ctx)
    meter = stack.meter(ctx)
    asyncio.run(_starts(ctx, stack))
    ctx.report.add_cpu("webhook + idle", meter.stop())


async def _starts(ctx: Context, stack: ParleyStack) -> None:
    plan = ctx.plan
    probe = await Probe.open(ctx, stack.api)
    try:
        paused_before = await probe.prefect_paused()
        writes_before = ctx.pg.table_writes(PREFECT_DB)
        tables_before = ctx.pg.tables_bytes(PARLEY_DB)
        prefect_before = ctx.pg.database_bytes(PREFECT_DB)
        fixed = descendants(os.getpid())
        async with new_http(max(plan.webhook_concurrency, plan.idle_in_flight)) as http:
            burst = _chats(ctx, stack, "webhook", plan.webhook_contacts, http, timeout=3600)
            await watched(
                _burst(ctx, burst), stack.fake, "webhook", diagnose=lambda: probe.diagnose(burst)
            )
            rest = _chats(
                ctx, stack, "idle", max(0, plan.idle_conversations - len(burst)), http, timeout=3600
            )
            greeted = await watched(
                _greet(ctx, rest), stack.fake, "idle", diagnose=lambda: probe.diagnose(rest)
            )
            everyone = burst + [c for c in rest if c.sent]  # the greeted, within the budget
            await _wait_all_suspended(ctx, probe, everyone, paused_before)
            await asyncio.sleep(2.0)
            processes = [pid for pid in descendants(os.getpid()) if pid not in fixed]
            background = await _idle_cpu(ctx, stack, 3.0 if plan.mode == "quick" else 10.0)
            await verify_transcripts("parley idle", stack.fake, everyone, settle=1.0)
            await probe.verify("parley idle", everyone, "suspended")
        tables_after = ctx.pg.tables_bytes(PARLEY_DB)
        prefect_after = ctx.pg.database_bytes(PREFECT_DB)
        writes = writes_between(writes_before, ctx.pg.table_writes(PREFECT_DB), len(everyone))
    finally:
        await probe.close()
    ctx.remember("parley idle", stack.fake, everyone)
    n = len(everyone)
    idle: dict[str, Any] = {
        "suspended": n,
        "attempted": plan.idle_conversations,
        "processes": len(processes),
        "db_bytes_per_conversation": round((tables_after - tables_before) / n),
        "prefect_db_bytes_per_conversation": round((prefect_after - prefect_before) / n),
        "worker_rss_mib": round(rss_kib(stack.worker_pid) / 1024),
        "cpu_pct_while_idle": background,
    }
    if greeted is not None:
        idle["greeted_per_s"] = greeted
    ctx.report.add("idle", idle)
    ctx.report.add("prefect_rows_written_per_conversation_start", dict(list(writes.items())[:8]))


async def _idle_cpu(ctx: Context, stack: ParleyStack, seconds: float = 10.0) -> dict[str, float]:
    """What the stack burns with every conversation suspended and nobody writing: the
    worker's and dispatcher's polling, Prefect's own services (percent of one core)."""
    meter = stack.meter(ctx)
    await asyncio.sleep(seconds)
    spent = meter.stop()
    wall = spent["wall"] or seconds
    skip = {"wall", "waited for a core", "everything else", "harness", "webhook-echo"}
    return {name: round(100 * cpu / wall, 1) for name, cpu in spent.items() if name not in skip}


async def _burst(ctx: Context, chats: list[Chat]) -> None:
    posting = asyncio.Semaphore(ctx.plan.webhook_concurrency)
    started = time.perf_counter()
    await asyncio.gather(*(c.say("Hi", [GREETING], "start", post_limit=posting) for c in chats))
    ended = max(c.turns[0].replied for c in chats)
    ctx.report.add("webhook_ack_ms", summary_ms([c.turns[0].ack for c in chats], (50, 99)))
    ctx.report.add("starts_per_s", round(len(chats) / (ended - started), 2))


async def _greet(ctx: Context, chats: list[Chat]) -> float | None:
    """The rest of the idle population, ``idle_in_flight`` new contacts at a time, until
    ``idle_budget_s`` runs out (contacts not greeted by then never write)."""
    if not chats:
        return None
    started = time.perf_counter()
    budget = ctx.plan.idle_budget_s
    stop_at = started + budget if budget else None

    async def greet(chat: Chat) -> None:
        if stop_at is None or time.perf_counter() < stop_at:
            await chat.say("Hi", [GREETING], "start")

    await gather_limited(ctx.plan.idle_in_flight, [greet(c) for c in chats])
    greeted = sum(1 for c in chats if c.sent)
    rate = round(greeted / (time.perf_counter() - started), 2)
    print(f"  {greeted} of {len(chats)} more conversations greeted ({rate}/s)", flush=True)
    return rate


async def _wait_all_suspended(
    ctx: Context, probe: Probe, chats: list[Chat], paused_before: int
) -> None:
    phones = [c.phone for c in chats]
    n = len(chats)
    deadline = time.monotonic() + ctx.plan.hot_seconds + 120 + n * 0.02
    suspended = paused = 0
    while time.monotonic() < deadline:
        suspended = await probe.count(phones, "suspended")
        paused = await probe.prefect_paused() - paused_before
        if suspended == n and paused >= n:
            return
        await asyncio.sleep(1.0)
    raise FigureError(f"idle: only {suspended}/{n} suspended ({paused} runs PAUSED in Prefect)")
