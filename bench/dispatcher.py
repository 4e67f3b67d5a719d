"""Dispatcher throughput: outreach actions per second over many identities, on PostgreSQL.

``uv run python -m bench.dispatcher [--identities 1000] [--per-identity 2] [--parallel 10]
[--processes 1]``

A fresh database (``dispatcher_bench``) gets N identities, each a LinkedIn seat at the loopback
gateway with its own queue of actions, all due now, inside working hours, under limits that
allow them (spacing 0). The dispatcher's own loop then drains them exactly as a dispatcher run
does (``parley.outreach.dispatch.drain`` per identity, ``--parallel`` identities at a time): claim
with SKIP LOCKED, the decision over the identity's history, the freshness check, the gateway
call, the recorded outcome. What is *not* in the figure: Prefect's per-identity concurrency
slots — run with ``--with-slots`` against a Prefect server (``PREFECT_API_URL``) to drain with
the dispatcher run's own tick instead (``prefect_adapter.outreach_tick.outreach_tick``: 50
identities a tick, their slots taken with one lease and given back after).

``--processes N`` drains with N dispatcher processes at once, each working its share of the
identities (what Prefect's per-identity slot gives several dispatcher runs or hosts: one
identity is only ever worked by one of them); ``--parallel`` is then per process.

It prints the settings and the figures and refuses to report a figure when any action was not
sent exactly once (the gateway's record is compared with Parley's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
from sqlalchemy import func, select

from bench.pg import Server
from devkit.fakes.linkedin_gateway import DEFAULT_API_KEY, FakeLinkedInGateway
from parley.campaign.registry import CampaignCache
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.conversation.http_action import post_json
from parley.db import Database
from parley.db.migrate import upgrade
from parley.db.models import Action, Identity
from parley.outreach import dispatch
from parley.runtime import Runtime

DATABASE = "dispatcher_bench"
PER_DRAIN = 20  # prefect_adapter.outreach_tick.ACTIONS_PER_IDENTITY_PER_TICK
ALWAYS_OPEN = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
POLICY = {
    "working_hours": {"weekly": ALWAYS_OPEN},
    "limits": {"actions": {"linkedin_profile_visit": {"spacing": "0s", "daily": 10_000}}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--per-identity", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=10, help="identities worked at once")
    parser.add_argument(
        "--processes", type=int, default=1, help="dispatcher processes, identities split"
    )
    parser.add_argument("--with-slots", action="store_true", help="acquire Prefect's slot too")
    parser.add_argument(
        "--gateway-in-process",
        action="store_true",
        help="run the loopback gateway in this process (it then competes for the GIL)",
    )
    args = parser.parse_args()
    if args.with_slots and args.processes > 1:
        parser.error("--with-slots runs the dispatcher's own tick, in one process")
    raise SystemExit(asyncio.run(_run(args)))


async def _run(args: argparse.Namespace) -> int:
    server = Server()
    server.check()
    server.recreate(DATABASE)
    url = server.asyncpg_url(DATABASE)
    await asyncio.to_thread(upgrade, url)
    accounts = [f"seat-{n}" for n in range(args.identities)]
    gateway = _Gateway(accounts, in_process=args.gateway_in_process)
    rt = _runtime(url, args.parallel)
    try:
        identity_ids = await _queue(rt.db, gateway, accounts, args.per_identity)
        if args.processes > 1:
            outcomes, elapsed, cpu = await asyncio.to_thread(
                _drain_in_processes, url, identity_ids, args
            )
        else:
            started = time.perf_counter()
            cpu = time.process_time()
            outcomes = await _drain(rt, identity_ids, args)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return _report(args, outcomes, elapsed, cpu, gateway.idempotency_keys(), server)
    finally:
        await _close(rt)
        gateway.stop()  # the database stays for a look; the next run recreates it


def _runtime(url: str, parallel: int) -> Runtime:
    """What a dispatcher process needs to drain: the database and the gateway's client."""
    return Runtime(
        db=Database(url, pool_size=parallel + 5),
        channels={},
        post_json=post_json,
        campaigns=CampaignCache(),
        outreach={"linkedin": LinkedInChannel(LinkedInConfig())},
    )


async def _close(rt: Runtime) -> None:
    await rt.outreach["linkedin"].aclose()
    await rt.db.dispose()


class _Gateway:
    """The loopback gateway, in a process of its own by default: a real gateway is another
    service, and one sharing the dispatcher's interpreter makes every call wait for the GIL."""

    def __init__(self, accounts: list[str], *, in_process: bool) -> None:
        self.fake: FakeLinkedInGateway | None = None
        self.process: subprocess.Popen[bytes] | None = None
        if in_process:
            self.fake = FakeLinkedInGateway(
                require_connection=False, accounts=accounts, auto_delivered=False
            )
            self.fake.start()
            self.url = self.fake.gateway_url
            return
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        seats = [arg for account in accounts for arg in ("--account", account)]
        command = [sys.executable, "-m", "devkit.fakes.linkedin_gateway", "--port", str(port)]
        self.process = subprocess.Popen(
            [*command, "--no-connection-check", *seats],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/_fake/accounts", timeout=5).is_success:
                    return
            time.sleep(0.2)
        self.stop()
        raise SystemExit("the loopback gateway did not start")

    def settings(self, account: str) -> dict[str, str]:
        return {"account_id": account, "gateway_url": self.url, "api_key": DEFAULT_API_KEY}

    def idempotency_keys(self) -> Counter[str]:
        """What the gateway performed, by key: each must be there exactly once."""
        if self.fake is not None:
            return Counter(action.idempotency_key for action in self.fake.performed)
        performed = httpx.get(f"{self.url}/_fake/actions", timeout=60).json()
        return Counter(str(action["idempotency_key"]) for action in performed)

    def stop(self) -> None:
        if self.fake is not None:
            self.fake.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


async def _queue(
    db: Database, gateway: _Gateway, accounts: list[str], per_identity: int
) -> list[int]:
    now = datetime.now(UTC)
    ids: list[int] = []
    async with db.transaction() as session:
        for n, account in enumerate(accounts):
            identity = Identity(
                channel="linkedin",
                address=account,
                policy=POLICY,
                settings=gateway.settings(account),
            )
            session.add(identity)
            await session.flush()
            ids.append(identity.id)
            for k in range(per_identity):
                session.add(
                    Action(
                        identity_id=identity.id,
                        channel="linkedin",
                        type="linkedin_profile_visit",
                        payload={"to": f"lead-{n}-{k}"},
                        not_before=now,
                        idempotency_key=f"bench-{n}-{k}",
                    )
                )
    return ids


async def _drain(rt: Runtime, identity_ids: list[int], args: argparse.Namespace) -> Counter[str]:
    gate = asyncio.Semaphore(args.parallel)
    outcomes: Counter[str] = Counter()
    rng = random.Random(1)

    async def one(identity_id: int) -> None:
        async with gate:
            while True:
                done = await dispatch.drain(rt, identity_id, rng, limit=PER_DRAIN)
                outcomes.update(o for o in done if o not in ("idle", "waiting"))
                if done[-1] in ("idle", "waiting"):
                    break

    for _ in range(10):  # retries (a transient gateway error backs off) run in later rounds
        if args.with_slots:
            await _ticks(rt, args, outcomes)
        else:
            await asyncio.gather(*(one(identity_id) for identity_id in identity_ids))
        async with rt.db.read() as session:
            due = await session.scalar(
                select(func.min(Action.not_before)).where(Action.status == "queued")
            )
        if due is None:
            break
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.1)
    return outcomes


async def _ticks(rt: Runtime, args: argparse.Namespace, outcomes: Counter[str]) -> None:
    """The dispatcher run's own outreach tick, Prefect's per-identity slots included, until
    no action is due."""
    from prefect_adapter.outreach_tick import outreach_tick

    while done := await outreach_tick(rt, parallel=args.parallel):
        outcomes.update(
            {key.removeprefix("action "): n for key, n in done.items() if key != "action idle"}
        )


def _drain_in_processes(
    url: str, identity_ids: list[int], args: argparse.Namespace
) -> tuple[Counter[str], float, float]:
    """N processes, each its share of the identities, all starting at one instant (after
    their imports): the figure is from that instant to the last one's end."""
    start_at = time.time() + 10.0
    shares = [identity_ids[n :: args.processes] for n in range(args.processes)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.processes) as pool:
        results = pool.starmap(_drain_share, [(url, share, args, start_at) for share in shares])
    outcomes: Counter[str] = Counter()
    for done, _ended, _cpu in results:
        outcomes.update(done)
    elapsed = max(ended for _done, ended, _cpu in results) - start_at
    return outcomes, elapsed, sum(cpu for _done, _ended, cpu in results)


def _drain_share(
    url: str, identity_ids: list[int], args: argparse.Namespace, start_at: float
) -> tuple[dict[str, int], float, float]:
    async def share() -> tuple[dict[str, int], float, float]:
        rt = _runtime(url, args.parallel)
        try:
            await asyncio.sleep(max(0.0, start_at - time.time()))
            cpu = time.process_time()
            done = await _drain(rt, identity_ids, args)
            return dict(done), time.time(), time.process_time() - cpu
        finally:
            await _close(rt)

    return asyncio.run(share())


def _report(
    args: argparse.Namespace,
    outcomes: Counter[str],
    elapsed: float,
    cpu: float,
    keys: Counter[str],
    server: Server,
) -> int:
    expected = args.identities * args.per_identity
    sent = outcomes.get("sent", 0) + outcomes.get("action sent", 0)
    settings = {
        "identities": args.identities,
        "actions_per_identity": args.per_identity,
        "identities_at_once": args.parallel,
        "dispatcher_processes": args.processes,
        "prefect_slots": args.with_slots,
        "gateway": "in this process" if args.gateway_in_process else "its own process",
        "postgresql": server.version(),
        "cores": os.cpu_count(),
    }
    print("settings:", json.dumps(settings))
    print("outcomes:", dict(outcomes))
    if sent != expected or len(keys) != expected or max(keys.values(), default=0) != 1:
        print(f"REFUSED: {sent} sent of {expected}, {len(keys)} distinct at the gateway")
        return 1
    print(
        f"dispatcher throughput: {expected / elapsed:.1f} actions/s ({expected} in {elapsed:.1f} s"
        f"; {1000 * cpu / expected:.1f} ms of the dispatcher's CPU per action)"
    )
    return 0


if __name__ == "__main__":
    main()
