"""``make bench`` / ``make bench-quick``: Parley and its peers, measured in one run.

    uv run python -m bench [--quick] [--only FIGURE ...] [--samples N] [--out PATH]

Runs, on PostgreSQL and in this one process tree, the floor (one transaction + the reply POST),
the onboarding bot on DBOS Transact, the same bot written the naive way on Prefect, and
Parley's own figures (hot/cold turns, cold start, webhook ack, throughput, replay cost, idle
cost). Prints a table with the settings used and writes ``bench/results/latest.json`` — only
if every transcript of every figure was exactly what the bot should have said.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Final

from bench import parley_figures, parley_stack, peer_figures, profiled, snapshot
from bench.context import DBOS_DB, FLOOR_DB, PARLEY_DB, PREFECT_DB, Context, Plan
from bench.harness import FigureError
from bench.pg import Server
from bench.procs import PeerError
from bench.report import Report, cores
from bench.script import check_against_campaigns

RESULTS: Final = snapshot.root() / "bench" / "results" / "latest.json"

# In run order: the peers first (they need the machine to themselves), Parley last; the
# webhook burst + idle figure leaves N suspended conversations behind, so it goes at the end.
FIGURES: Final[dict[str, Callable[[Context], None]]] = {
    "floor": peer_figures.floor,
    "dbos": peer_figures.dbos,
    "naive": peer_figures.naive,
    "latency": parley_figures.latency,
    "throughput": parley_figures.throughput,
    "replay": parley_figures.replay,
    "starts": parley_figures.starts,
}
ALIASES: Final = {
    "hot": "latency",
    "cold": "latency",
    "cold_start": "latency",
    "dbos_throughput": "dbos",
    "naive_prefect": "naive",
    "pg_floor": "floor",
    "webhook": "starts",
    "idle": "starts",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts, under 3 minutes")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted([*FIGURES, *ALIASES]),
        help="run only this figure (repeatable); results go to .parley/bench/only.json",
    )
    parser.add_argument("--samples", type=int, help="conversations/samples per latency figure")
    parser.add_argument("--at-once", type=int, help="latency figures: users playing at once")
    parser.add_argument("--sizes", type=int, nargs="+", help="throughput: users at once")
    parser.add_argument("--idle", type=int, help="idle: suspended conversations")
    parser.add_argument("--histories", type=int, nargs="+", help="replay: earlier turns")
    parser.add_argument("--hot-seconds", type=float, help="Parley's hot window")
    parser.add_argument(
        "--budget", type=float, help="seconds per throughput size and for greeting the idle"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run Parley's worker and webhook under cProfile (slower; for diagnosis only)",
    )
    parser.add_argument("--out", type=Path, help="where to write the JSON")
    parser.add_argument(
        "--code",
        metavar="REV",
        help="measure this commit's product code (exported with git archive), not the "
        "working tree, e.g. --code HEAD while someone is mid-edit",
    )
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan.quick() if args.quick else Plan.full()
    if args.samples:
        plan = plan.with_samples(args.samples)
    if args.sizes:
        plan = Plan(**{**plan.__dict__, "throughput_sizes": tuple(args.sizes)})
    if args.idle:
        plan = Plan(**{**plan.__dict__, "idle_conversations": args.idle})
    if args.histories:
        plan = Plan(**{**plan.__dict__, "replay_histories": tuple(args.histories)})
    if args.at_once:
        plan = Plan(**{**plan.__dict__, "latency_at_once": args.at_once})
    if args.budget is not None:
        budgets = {"throughput_budget_s": args.budget, "idle_budget_s": args.budget}
        plan = Plan(**{**plan.__dict__, **budgets})
    if args.hot_seconds is not None:
        plan = Plan(**{**plan.__dict__, "hot_seconds": args.hot_seconds})
    return plan


def settings(ctx: Context, selected: list[str]) -> dict[str, object]:
    plan = ctx.plan
    return {
        "figures": selected,
        "python": platform.python_version(),
        "prefect": version("prefect"),
        "dbos": version("dbos"),
        "postgresql": ctx.pg.version(),
        "cores": cores(),
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "databases": f"{PARLEY_DB}, {PREFECT_DB} (Prefect server), {DBOS_DB}, {FLOOR_DB}"
        f" on {ctx.pg.host}:{ctx.pg.port}",
        "parley_hot_window_s": plan.hot_seconds,
        "parley_worker": parley_stack.worker_settings(plan),
        "naive_prefect": "flow.serve(), default settings (runner poll 10 s), process per run",
        "dbos_settings": "defaults (LISTEN/NOTIFY, pool 20), webhook and workflows in one process",
        "latency_users": f"{plan.latency_chats} conversations ({plan.latency_at_once} under way"
        f" at once, one turn in flight at a time), naive {plan.naive_chats}, "
        f"floor {plan.floor_samples} turns",
        "throughput_users": "/".join(map(str, plan.throughput_sizes))
        + ("" if plan.throughput_sizes == (100, 1000) else " (not the issue's 100/1000)"),
        "counts": plan.reduced(),
        "dbos_throughput_users": plan.dbos_throughput,
        "webhook_contacts": f"{plan.webhook_contacts} ({plan.webhook_concurrency} concurrent)",
        "replay": f"histories {'/'.join(map(str, plan.replay_histories))}, "
        f"{plan.replay_chats} conversation(s)",
        "idle_conversations": plan.idle_conversations,
        "budgets_s": f"throughput {plan.throughput_budget_s or 'none'} per size, "
        f"idle greeting {plan.idle_budget_s or 'none'} (where a count outruns the machine)",
        "status_callbacks": "on (sent + delivered per message, like Meta)",
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "code": code_version(),
    }


def code_version() -> str:
    """The commit measured, and whether the working tree differed from it (read-only git)."""
    if exported := snapshot.measured_code():
        return exported
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + {len(dirty)} modified file(s)" if dirty else head


def use_bytecode_cache(data_dir: Path) -> str:
    """Every process the run starts compiles its imports once and reuses them, as an installed
    package does: with ``PYTHONDONTWRITEBYTECODE`` set (some shells here set it) each new
    process would recompile ~1,000 Prefect modules, which would weigh most on the
    process-per-run peer and measure the shell rather than the design. The cache lives under
    the run's data dir (``PYTHONPYCACHEPREFIX``), so nothing is written into the source tree."""
    flag = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    prefix = (data_dir / "pycache").resolve()
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    warm = prefix.exists() and any(prefix.rglob("*.pyc"))
    return (
        f"on for started processes (PYTHONPYCACHEPREFIX={prefix}, "
        f"{'warm' if warm else 'cold: first run compiles'}; "
        f"PYTHONDONTWRITEBYTECODE was {flag or 'unset'})"
    )


def print_profiles(ctx: Context) -> None:
    for process, thread in (("worker", "parley-worker-loop"), ("webhook", "main")):
        path = ctx.data_dir / f"profile-{process}.{thread}.prof"
        if not path.exists():
            print(f"no profile for the {process} ({path})")
            continue
        text = profiled.summary([str(path)])
        (ctx.data_dir / f"profile-{process}.txt").write_text(text)
        print(f"\n--- {process} profile ({path}; full text in profile-{process}.txt) ---")
        print("\n".join(text.splitlines()[:45]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.code and not snapshot.measured_code():
        snapshot.rerun_in(args.code, without_code(sys.argv[1:] if argv is None else argv))
    selected = list(FIGURES)
    if args.only:
        wanted = {ALIASES.get(name, name) for name in args.only}
        selected = [name for name in FIGURES if name in wanted]
    plan = make_plan(args)
    pg = Server()
    pg.check()
    check_against_campaigns()
    ctx = Context(plan=plan, pg=pg, report=Report(plan.mode), profile=args.profile)
    standard = Plan.quick() if args.quick else Plan.full()
    changed = [f"{k}={v}" for k, v in plan.__dict__.items() if standard.__dict__[k] != v]
    if changed:
        ctx.report.notes.append(f"not the standard {plan.mode} plan: " + ", ".join(changed))
    cache = use_bytecode_cache(ctx.data_dir)
    ctx.report.settings = {**settings(ctx, selected), "bytecode_cache": cache}
    started = time.monotonic()
    stop_on_signals()
    with ctx.services:
        for name in selected:
            print(f"\n== {name} ==", flush=True)
            figure_started = time.monotonic()
            ctx.report.current = name
            try:
                FIGURES[name](ctx)
            except (FigureError, PeerError) as exc:
                ctx.report.fail(name, str(exc), retract=name)
            print(f"   ({time.monotonic() - figure_started:.0f} s)", flush=True)
        ctx.report.current = "checks"
        ctx.recheck_all()
        ctx.report.add("webhook_redeliveries", ctx.redeliveries())
        anomalies = parley_stack.log_anomalies(ctx)
        if anomalies is not None:
            ctx.report.add("parley_log_anomalies", anomalies)
    if args.profile:
        print_profiles(ctx)
        ctx.report.notes.append("profiled run: Parley's worker and webhook ran under cProfile")
    ctx.report.settings["wall_s"] = round(time.monotonic() - started)
    ctx.report.settings["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(ctx.report.table())
    return write_results(ctx, args)


def write_results(ctx: Context, args: argparse.Namespace) -> int:
    """``latest.json`` is the committed record, so only a complete, standard, unprofiled run
    that lost and duplicated nothing replaces it; any other run writes under ``.parley/bench``
    and a failed one exits non-zero, naming the figures it refused to report."""
    partial = bool(args.only or args.profile)
    out = args.out or (ctx.data_dir / "only.json" if partial else RESULTS)
    if ctx.report.failed and out == RESULTS:
        out = ctx.data_dir / "failed.json"
    ctx.report.write(out)
    print(f"\nwrote {out}")
    if ctx.report.failed:
        print(
            f"\nBENCHMARK FAILED: {len(ctx.report.failed)} figure(s) not reported "
            f"({', '.join(ctx.report.failed)}); see 'failed' in {out}"
            f"{'' if out == RESULTS else f' ({RESULTS} left as it was)'}",
            file=sys.stderr,
        )
        return 1
    return 0


def without_code(argv: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--code":
            skip = True
        elif not arg.startswith("--code="):
            out.append(arg)
    return out


def stop_on_signals() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every process the run started is stopped
    (they run in sessions of their own and would outlive a killed harness)."""

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, unwind)


if __name__ == "__main__":
    raise SystemExit(main())
