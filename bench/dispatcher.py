"""Dispatcher throughput: outreach actions per second over many identities, on PostgreSQL.

``uv run python -m bench.dispatcher [--identities 1000] [--per-identity 2] [--parallel 10]``

A fresh database (``dispatcher_bench``) gets N identities, each a LinkedIn seat at the loopback
gateway with its own queue of actions, all due now, inside working hours, under limits that
allow them (spacing 0). The dispatcher's own loop then drains them exactly as a dispatcher run
does (``parley.outreach.perform_next`` per identity, ``--parallel`` identities at a time): claim
with SKIP LOCKED, the decision over the identity's history, the freshness check, the gateway
call, the recorded outcome. What is *not* in the figure: Prefect's per-identity concurrency
slot (``tasks/outreach.py`` acquires one per identity per tick; two API calls) — run with
``--with-slots`` against a Prefect server (``PREFECT_API_URL``) to include it.

It prints the settings and the figures and refuses to report a figure when any action was not
sent exactly once (the gateway's record is compared with Parley's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import func, select

from bench.pg import Server
from parley import outreach
from parley.campaign.registry import CampaignCache
from parley.channels.linkedin.channel import LinkedInChannel, LinkedInConfig
from parley.db import Database
from parley.db.migrate import upgrade
from parley.db.models import Action, Identity
from parley.http_action import post_json
from parley.runtime import Runtime
from parley.testing.linkedin_gateway import FakeLinkedInGateway

DATABASE = "dispatcher_bench"
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
    parser.add_argument("--with-slots", action="store_true", help="acquire Prefect's slot too")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(_run(args)))


async def _run(args: argparse.Namespace) -> int:
    server = Server()
    server.check()
    server.recreate(DATABASE)
    url = server.asyncpg_url(DATABASE)
    await asyncio.to_thread(upgrade, url)
    accounts = [f"seat-{n}" for n in range(args.identities)]
    gateway = FakeLinkedInGateway(require_connection=False, accounts=accounts, auto_delivered=False)
    gateway.start()
    db = Database(url, pool_size=args.parallel + 5)
    channel = LinkedInChannel(LinkedInConfig())
    rt = Runtime(
        db=db,
        channels={},
        post_json=post_json,
        campaigns=CampaignCache(),
        outreach={"linkedin": channel},
    )
    try:
        identity_ids = await _queue(db, gateway, accounts, args.per_identity)
        started = time.perf_counter()
        outcomes = await _drain(rt, identity_ids, args)
        elapsed = time.perf_counter() - started
        return _report(args, outcomes, elapsed, gateway, server)
    finally:
        await channel.aclose()
        await db.dispose()
        gateway.stop()  # the database stays for a look; the next run recreates it


async def _queue(
    db: Database, gateway: FakeLinkedInGateway, accounts: list[str], per_identity: int
) -> list[int]:
    now = datetime.now(UTC)
    ids: list[int] = []
    async with db.transaction() as session:
        for n, account in enumerate(accounts):
            sender = gateway.sender(account)
            identity = Identity(
                channel="linkedin",
                address=account,
                policy=POLICY,
                settings=dict(sender.settings),
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
            if args.with_slots:
                from tasks.outreach import _drain as drain_with_slot

                outcomes.update(await drain_with_slot(rt, identity_id))
                return
            while (outcome := await outreach.perform_next(rt, identity_id, rng)) not in (
                "idle",
                "waiting",
            ):
                outcomes[outcome] += 1

    for _ in range(10):  # retries (a transient gateway error backs off) run in later rounds
        await asyncio.gather(*(one(identity_id) for identity_id in identity_ids))
        async with rt.db.read() as session:
            due = await session.scalar(
                select(func.min(Action.not_before)).where(Action.status == "queued")
            )
        if due is None:
            break
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.1)
    return outcomes


def _report(
    args: argparse.Namespace,
    outcomes: Counter[str],
    elapsed: float,
    gateway: FakeLinkedInGateway,
    server: Server,
) -> int:
    expected = args.identities * args.per_identity
    sent = outcomes.get("sent", 0) + outcomes.get("action sent", 0)
    keys = Counter(action.idempotency_key for action in gateway.performed)
    settings = {
        "identities": args.identities,
        "actions_per_identity": args.per_identity,
        "identities_at_once": args.parallel,
        "prefect_slots": args.with_slots,
        "postgresql": server.version(),
        "cores": os.cpu_count(),
    }
    print("settings:", json.dumps(settings))
    print("outcomes:", dict(outcomes))
    if sent != expected or len(keys) != expected or max(keys.values(), default=0) != 1:
        print(f"REFUSED: {sent} sent of {expected}, {len(keys)} distinct at the gateway")
        return 1
    print(
        f"dispatcher throughput: {expected / elapsed:.1f} actions/s ({expected} in {elapsed:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    main()
