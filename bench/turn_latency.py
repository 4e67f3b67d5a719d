"""Per-turn latency of WhatsApp conversations through the whole stack, and the worker's memory.

    uv run python -m bench.turn_latency [--users 10] [--hot-seconds 3] [--think-seconds 6]

Starts the same stack as ``parley demo`` (its own data dir ``.parley/bench``) and plays
``--users`` onboarding conversations at once through the real webhook. Each user's first turn
starts a flow run (cold start), one turn comes after thinking longer than the hot window (cold
resume: the run suspended and the webhook resumed it), the others answer at once (hot turns).
Latency = webhook POST until the bot's answer reached the (loopback) Graph API.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from pathlib import Path

from parley.local.dev import bring_up
from parley.settings import get_settings
from parley.testing.whatsapp_user import WhatsAppUser

Latencies = dict[str, list[float]]


async def _conversation(user: WhatsAppUser, think: float, out: Latencies) -> None:
    async def turn(kind: str, text: str) -> None:
        started = time.perf_counter()
        await user.say(text, timeout=120)
        out[kind].append(time.perf_counter() - started)

    await turn("cold start", "Hi")
    await turn("hot", user.name)
    await asyncio.sleep(think)
    await turn("cold resume", f"{user.name.lower()}@example.com")
    started = time.perf_counter()
    await user.press("pro", "Pro", timeout=120)
    out["hot"].append(time.perf_counter() - started)


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and its descendants (the worker and its flow runs)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
        )
        stack.extend(int(child) for child in children)
    return total


def _sample_peak(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(0.2):
        peak[0] = max(peak[0], _tree_rss_kib(pid))


def _report(latencies: Latencies, args: argparse.Namespace, peak_kib: int, wall: float) -> None:
    settings = get_settings()
    print(
        f"settings: users={args.users} hot_wait={settings.hot_wait_seconds}s "
        f"think={args.think_seconds}s inbox_poll={settings.hot_poll_seconds}s "
        f"database={settings.resolved_database_url.split(':')[0]} "
        f"worker=in-process poll={settings.worker_poll_seconds}s cores={os.cpu_count()}"
    )
    print(f"{'turn kind':<12} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for kind, values in latencies.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        print(
            f"{kind:<12} {len(values):>4} {statistics.median(values) * 1000:>8.0f} "
            f"{p95 * 1000:>8.0f} {ordered[-1] * 1000:>8.0f}"
        )
    print(f"worker peak RSS (with its flow-run processes): {peak_kib / 1024:.0f} MiB")
    print(f"wall time: {wall:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--hot-seconds", type=float, default=3.0)
    parser.add_argument("--think-seconds", type=float, default=6.0)
    args = parser.parse_args()
    os.environ.setdefault("PARLEY_DATA_DIR", ".parley/bench")
    os.environ["PARLEY_HOT_WAIT_SECONDS"] = str(args.hot_seconds)
    os.environ.setdefault("PARLEY_DEFAULT_CAMPAIGN", "examples/campaigns/onboarding.yaml")
    get_settings.cache_clear()
    settings = get_settings()
    running = bring_up(settings, fake_providers=True)
    stop, peak = threading.Event(), [0]
    worker_pid = running.stack.processes["worker"].popen.pid
    sampler = threading.Thread(target=_sample_peak, args=(worker_pid, stop, peak), daemon=True)
    sampler.start()
    try:
        assert running.fake_whatsapp is not None
        suffix = int(time.time()) % 10**5
        users = [
            WhatsAppUser(
                phone=f"44700{suffix:05d}{i:03d}",
                name=f"User{i}",
                webhook_url=f"{settings.webhook_url}/webhooks/whatsapp",
                app_secret=settings.whatsapp_app_secret.get_secret_value(),
                phone_number_id=settings.whatsapp_phone_number_id,
                fake=running.fake_whatsapp,
            )
            for i in range(args.users)
        ]
        latencies: Latencies = {"cold start": [], "hot": [], "cold resume": []}
        started = time.perf_counter()
        asyncio.run(_run_all(users, args.think_seconds, latencies))
        _report(latencies, args, peak[0], time.perf_counter() - started)
    finally:
        stop.set()
        running.stop()


async def _run_all(users: list[WhatsAppUser], think: float, out: Latencies) -> None:
    await asyncio.gather(*(_conversation(user, think, out) for user in users))


if __name__ == "__main__":
    main()
