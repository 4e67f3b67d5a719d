"""Lead import: N leads imported into an outreach campaign, against a real Prefect server on
PostgreSQL and the real worker (which runs the dispatcher).

``uv run python -m bench.leads_import [--leads 10000] [--rate 5] [--timeout 3600]``
(``make bench-import``)

A fresh database (``leads_import_bench``, Prefect's in ``leads_import_prefect_bench``) gets one
LinkedIn seat whose working hours are closed all day today (so every first action stays
queued: the figure is the pace of *starting*, not of the gateway) and a campaign whose first
node queues a profile visit. The harness then imports the leads in-process exactly as
``parley leads import`` does, and watches:

* **import**: rows checked, stored, conversations created (the CLI's wall time);
* **runs created**: until every imported conversation has its flow run (the dispatcher's
  paced starts, ``PARLEY_RUN_STARTS_PER_SECOND``);
* **first action queued**: until every lead's first action is in its identity's queue (the
  run started, took the conversation over, queued the visit and suspended);
* **Prefect server CPU**: CPU seconds of the server process (and its children) over the whole
  window, and its average share of one core; the worker's too.

It prints the settings and the figures; ``--rate`` sets the pace (try a few: the default is
the fastest pace at which the server kept up on the reference machine, docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from bench.pg import Server
from bench.procs import cpu_seconds
from devkit.stack.processes import Stack, free_port
from parley.campaign.registry import install_campaign
from parley.conversation import lead_import
from parley.db import Database
from parley.db.migrate import upgrade
from parley.db.models import Action, Conversation, Identity
from parley.settings import Settings
from parley.vocabulary import Status

DATABASE = "leads_import_bench"
PREFECT_DATABASE = "leads_import_prefect_bench"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CAMPAIGN = """
name: import-bench
channel: linkedin
inputs: [first_name]
start: visit
nodes:
  - {id: visit, type: send, action: linkedin_profile_visit}
  - {id: done, type: end}
edges:
  - {from: visit, to: done}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=Settings().run_starts_per_second)
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up after (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    pg = Server()
    pg.check()
    pg.recreate(DATABASE)
    pg.recreate(PREFECT_DATABASE)
    upgrade(pg.asyncpg_url(DATABASE))  # alembic runs an event loop of its own: before ours
    raise SystemExit(asyncio.run(_run(args)))


def _closed_today() -> dict[str, Any]:
    """Working hours on a single minute three days away: today's actions all wait, queued."""
    day = DAYS[(datetime.now(UTC).weekday() + 3) % 7]
    return {"working_hours": {"weekly": {day: ["03:00-03:01"]}}}


async def _prepare(url: str, workdir: Path) -> int:
    db = Database(url)
    try:
        path = workdir / "campaign.yaml"
        path.write_text(CAMPAIGN)
        async with db.transaction() as session:
            await install_campaign(session, path)
            seat = Identity(
                channel="linkedin", address="bench-seat", timezone="UTC", policy=_closed_today()
            )
            session.add(seat)
            await session.flush()
            return seat.id
    finally:
        await db.dispose()


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "linkedin": f"https://www.linkedin.com/in/bench-lead-{i}",
            "email": f"lead{i}@example.com",
            "name": f"Lead {i}",
            "first_name": f"Lead{i}",
            "company": f"Company {i % 97}",
        }
        for i in range(n)
    ]


async def _counts(db: Database) -> tuple[int, int, int]:
    """(imported conversations with a run, their first actions queued, failed ones)."""
    async with db.read() as session:
        with_run = await session.scalar(
            select(func.count()).where(
                Conversation.import_id.is_not(None), Conversation.flow_run_id.is_not(None)
            )
        )
        queued = await session.scalar(
            select(func.count(func.distinct(Action.conversation_id)))
            .join(Conversation, Conversation.id == Action.conversation_id)
            .where(Conversation.import_id.is_not(None))
        )
        failed = await session.scalar(
            select(func.count()).where(
                Conversation.import_id.is_not(None), Conversation.status == Status.FAILED
            )
        )
    return int(with_run or 0), int(queued or 0), int(failed or 0)


async def _run(args: argparse.Namespace) -> int:
    pg = Server()
    workdir = Path(tempfile.mkdtemp(prefix="parley-import-bench-"))
    url = pg.asyncpg_url(DATABASE)
    settings = {
        "PARLEY_DATABASE_URL": url,
        "PARLEY_DATA_DIR": str(workdir),
        "PARLEY_RUN_STARTS_PER_SECOND": str(args.rate),
    }
    os.environ.update(settings)
    identity_id = await _prepare(url, workdir)
    stack = Stack(workdir)
    stack.env["PREFECT_API_DATABASE_CONNECTION_URL"] = pg.asyncpg_url(PREFECT_DATABASE)
    stack.env["PREFECT_UI_ENABLED"] = "false"
    try:
        print("starting the Prefect server (PostgreSQL) and the worker...", flush=True)
        api = stack.start_prefect_server(free_port())
        os.environ["PREFECT_API_URL"] = api
        stack.start_worker()
        defaults = Settings()
        stack.wait_for_deployment(defaults.conversation_deployment)
        server_pid = stack.processes["prefect-server"].popen.pid
        worker_pid = stack.processes["worker"].popen.pid
        figures = await _measure(args, url, identity_id, server_pid, worker_pid)
    finally:
        stack.stop()
    _print(args, Settings(), figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures.get("complete") else 1


async def _measure(
    args: argparse.Namespace, url: str, identity_id: int, server_pid: int, worker_pid: int
) -> dict[str, Any]:
    rows = _rows(args.leads)
    db = Database(url)
    try:
        cpu_server, cpu_worker = cpu_seconds(server_pid), cpu_seconds(worker_pid)
        started = time.monotonic()
        print(f"importing {args.leads} leads...", flush=True)
        _prepared, counts = await lead_import.import_leads(
            db, "import-bench", identity_id, rows, source="bench"
        )
        imported = time.monotonic() - started
        print(f"  imported in {imported:.1f} s: {counts}", flush=True)
        runs_at = queued_at = None
        last = time.monotonic()
        deadline = started + args.timeout
        failed = 0
        while time.monotonic() < deadline:
            with_run, queued, failed = await _counts(db)
            now = time.monotonic() - started
            if runs_at is None and with_run >= args.leads:
                runs_at = now
            if queued >= args.leads:
                queued_at = now
                break
            if time.monotonic() - last > 30:
                print(f"  {now:.0f} s: {with_run} runs created, {queued} first actions queued")
                last = time.monotonic()
            await asyncio.sleep(1.0)
        window = time.monotonic() - started
        server = cpu_seconds(server_pid) - cpu_server
        worker = cpu_seconds(worker_pid) - cpu_worker
        with_run, queued, failed = await _counts(db)
    finally:
        await db.dispose()
    return {
        "leads": args.leads,
        "import_seconds": round(imported, 1),
        "import_leads_per_second": round(args.leads / imported, 1),
        "runs_created_seconds": None if runs_at is None else round(runs_at, 1),
        "first_action_queued_seconds": None if queued_at is None else round(queued_at, 1),
        "achieved_starts_per_second": round(
            queued / max(1e-9, (queued_at or window) - imported), 2
        ),
        "runs_created": with_run,
        "first_actions_queued": queued,
        "failed_conversations": failed,
        "prefect_server_cpu_seconds": round(server, 1),
        "prefect_server_cpu_share_of_a_core": round(server / window, 2),
        "worker_cpu_seconds": round(worker, 1),
        "window_seconds": round(window, 1),
        "machine_load_average_1m_at_end": round(os.getloadavg()[0], 1),
        "complete": queued_at is not None and failed == 0,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _print(args: argparse.Namespace, settings: Settings, figures: dict[str, Any]) -> None:
    print()
    print("settings:")
    print(f"  leads {args.leads}, PARLEY_RUN_STARTS_PER_SECOND {args.rate}")
    print(
        f"  dispatcher tick {settings.dispatcher_tick_seconds} s, worker concurrency "
        f"{settings.worker_concurrency}, import batch {lead_import.BATCH_SIZE}, "
        f"Prefect server on PostgreSQL, {os.cpu_count()} cores"
    )
    print("figures:")
    for key, value in figures.items():
        print(f"  {key}: {value}")
    if not figures.get("complete"):
        left = timedelta(seconds=args.timeout)
        print(f"NOT COMPLETE within {left}: see the counts above")


if __name__ == "__main__":
    main()
