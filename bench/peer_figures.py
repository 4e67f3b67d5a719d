"""The peers' figures: the PostgreSQL floor, DBOS Transact and naive Prefect, each started as
real processes under this harness, driven by the same simulated users, and stopped again.

Every peer gets its own loopback Graph API (status callbacks go to its webhook, as Meta's
would) and its own CRM endpoint; every transcript and every CRM registration is checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from bench.context import (
    DBOS_DB,
    FLOOR_DB,
    PEER_APP_SECRET,
    PEER_PHONE_NUMBER_ID,
    PEER_TOKEN,
    Context,
)
from bench.harness import (
    Chat,
    Endpoint,
    TimedFake,
    Turn,
    gather_limited,
    new_http,
    summary_ms,
    verify_transcripts,
)
from bench.onboarding import play_at_once, play_onboarding, user_name, verify_crm
from bench.peers import naive_prefect
from bench.peers.common import PeerArgs
from bench.procs import Service, environment, http_ok, python_module, spawn, wait_until
from bench.script import echo_turn
from devkit.fakes.recording_endpoint import RecordingEndpoint
from devkit.stack.processes import free_port


@contextmanager
def peer_provider(webhook_url: str) -> Iterator[tuple[TimedFake, RecordingEndpoint]]:
    fake = TimedFake(
        host="127.0.0.1",
        port=free_port(),
        access_token=PEER_TOKEN,
        phone_number_id=PEER_PHONE_NUMBER_ID,
        webhook_url=webhook_url,
        app_secret=PEER_APP_SECRET,
    )
    fake.start()
    crm = RecordingEndpoint(port=free_port()).start()
    try:
        yield fake, crm
    finally:
        fake.stop()
        crm.stop()


@contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service
    finally:
        service.stop()


def _peer_args(port: int, fake: TimedFake, database_url: str, crm: RecordingEndpoint) -> PeerArgs:
    return PeerArgs(
        port=port,
        graph_url=fake.api_url,
        access_token=PEER_TOKEN,
        phone_number_id=PEER_PHONE_NUMBER_ID,
        app_secret=PEER_APP_SECRET,
        database_url=database_url,
        crm_url=crm.url,
    )


def _endpoint(port: int) -> Endpoint:
    return Endpoint(
        f"http://127.0.0.1:{port}/webhooks/whatsapp", PEER_APP_SECRET, PEER_PHONE_NUMBER_ID
    )


# --- the floor ----------------------------------------------------------------------------------


def floor(ctx: Context) -> None:
    """Sequential turns of one user against the floor process: nothing else running."""
    ctx.pg.recreate(FLOOR_DB)
    port = free_port()
    with peer_provider(_endpoint(port).url) as (fake, crm):
        args = _peer_args(port, fake, ctx.pg.dsn(FLOOR_DB), crm)
        service = spawn(
            "pg-floor",
            python_module("bench.peers.pg_floor", *args.as_argv()),
            env=environment(),
            log_dir=ctx.log_dir,
        )
        with running(service):
            wait_until(http_ok(f"http://127.0.0.1:{port}/healthz"), service, timeout=60)
            meter = ctx.meter({"pg-floor": service.pid})
            turns = asyncio.run(_floor_turns(ctx, fake, _endpoint(port)))
            ctx.report.add_cpu("floor", meter.stop())
    ctx.report.add("pg_floor_ms", summary_ms([t.latency for t in turns]))


async def _floor_turns(ctx: Context, fake: TimedFake, endpoint: Endpoint) -> list[Turn]:
    async with new_http(4) as http:
        phone = ctx.phones.phone("floor")
        chat = Chat(phone, user_name(phone), endpoint, fake, http, timeout=30)
        warmup = 5
        turns = [
            await chat.say(f"m{i}", echo_turn(f"m{i}")[:1], "floor")
            for i in range(warmup + ctx.plan.floor_samples)
        ]
        await verify_transcripts("floor", fake, [chat])
    ctx.remember("floor", fake, [chat])
    return turns[warmup:]


# --- DBOS -------------------------------------------------------------------------------------


def dbos(ctx: Context) -> None:
    """Latency of the onboarding bot on DBOS, then 100 (``dbos_throughput``) users at once."""
    ctx.pg.recreate(DBOS_DB)
    port = free_port()
    with peer_provider(_endpoint(port).url) as (fake, crm):
        args = _peer_args(port, fake, ctx.pg.dsn(DBOS_DB), crm)
        service = spawn(
            "dbos-bot",
            python_module("bench.peers.dbos_bot", *args.as_argv()),
            env=environment(),
            log_dir=ctx.log_dir,
        )
        with running(service):
            wait_until(http_ok(f"http://127.0.0.1:{port}/healthz"), service, timeout=90)
            meter = ctx.meter({"dbos-bot": service.pid})
            chats = asyncio.run(_dbos_figures(ctx, fake, _endpoint(port)))
            ctx.report.add_cpu("dbos", meter.stop())
        verify_crm("dbos", crm.requests, chats)


async def _dbos_figures(ctx: Context, fake: TimedFake, endpoint: Endpoint) -> list[Chat]:
    plan = ctx.plan
    async with new_http(max(plan.dbos_throughput, 8)) as http:
        one_turn_at_a_time = asyncio.Lock()

        def chat(figure: str, timeout: float = 120, lock: asyncio.Lock | None = None) -> Chat:
            phone = ctx.phones.phone(figure)
            return Chat(
                phone, user_name(phone), endpoint, fake, http, timeout=timeout, turn_lock=lock
            )

        warmup = [chat("dbos")]
        await play_onboarding(warmup[0])
        latency = [chat("dbos", lock=one_turn_at_a_time) for _ in range(plan.latency_chats)]
        await gather_limited(plan.latency_at_once, [play_onboarding(c) for c in latency])
        load = [chat("dbos-load", timeout=600) for _ in range(plan.dbos_throughput)]
        rate = (await play_at_once(load))["turns_per_s"]
        everyone = warmup + latency + load
        await verify_transcripts("dbos", fake, everyone)
    ctx.remember("dbos", fake, everyone)
    turns = [t for c in latency for t in c.turns]
    ctx.report.add(
        "dbos_cold_start_ms", summary_ms([t.latency for t in turns if t.kind == "start"])
    )
    ctx.report.add("dbos_turn_ms", summary_ms([t.latency for t in turns if t.kind != "start"]))
    ctx.report.add(
        "dbos_throughput_turns_per_s", {str(plan.dbos_throughput): rate, "lost_messages": 0}
    )
    return everyone


# --- naive Prefect ------------------------------------------------------------------------------


def naive(ctx: Context) -> None:
    api = ctx.prefect_api()
    port = free_port()
    with peer_provider(_endpoint(port).url) as (fake, crm):
        args = _peer_args(port, fake, "", crm)
        # DEFAULT Prefect settings: none of the tuning the harness or Parley's stack applies.
        env = environment(
            drop_prefixes=("PREFECT_", "PARLEY_"),
            PREFECT_API_URL=api,
            PREFECT_HOME=str((ctx.data_dir / "naive-prefect").resolve()),
            BENCH_NAIVE_GRAPH_URL=fake.api_url,
            BENCH_NAIVE_ACCESS_TOKEN=PEER_TOKEN,
            BENCH_NAIVE_PHONE_NUMBER_ID=PEER_PHONE_NUMBER_ID,
            BENCH_NAIVE_CRM_URL=crm.url,
        )
        # Both start at once (the webhook needs only the API), as two services would.
        runner = spawn(
            "naive-serve",
            python_module("bench.peers.naive_prefect", "serve"),
            env=env,
            log_dir=ctx.log_dir,
        )
        webhook = spawn(
            "naive-webhook",
            python_module("bench.peers.naive_prefect", "webhook", *args.as_argv()),
            env=env,
            log_dir=ctx.log_dir,
        )
        with running(runner), running(webhook):
            deployment = f"{api}/deployments/name/{naive_prefect.DEPLOYMENT}"
            wait_until(http_ok(deployment), runner, timeout=120)
            wait_until(http_ok(f"http://127.0.0.1:{port}/healthz"), webhook, timeout=60)
            meter = ctx.meter({"naive-serve+runs": runner.pid, "naive-webhook": webhook.pid})
            chats = asyncio.run(_naive_figures(ctx, fake, _endpoint(port)))
            ctx.report.add_cpu("naive", meter.stop())
        verify_crm("naive-prefect", crm.requests, chats)


async def _naive_figures(ctx: Context, fake: TimedFake, endpoint: Endpoint) -> list[Chat]:
    async with new_http(8) as http:
        chats = []
        one_turn_at_a_time = asyncio.Lock()
        for _ in range(ctx.plan.naive_chats):
            phone = ctx.phones.phone("naive")
            chats.append(
                Chat(
                    phone,
                    user_name(phone),
                    endpoint,
                    fake,
                    http,
                    timeout=300,
                    turn_lock=one_turn_at_a_time,
                )
            )
        await gather_limited(ctx.plan.latency_at_once, [play_onboarding(c) for c in chats])
        await verify_transcripts("naive-prefect", fake, chats, settle=2.0)
    ctx.remember("naive-prefect", fake, chats)
    turns = [t for c in chats for t in c.turns]
    ctx.report.add(
        "naive_prefect_cold_start_ms", summary_ms([t.latency for t in turns if t.kind == "start"])
    )
    ctx.report.add(
        "naive_prefect_turn_ms", summary_ms([t.latency for t in turns if t.kind != "start"])
    )
    return chats
