"""What one benchmark run is: its plan (sample counts), its databases, its shared services.

The Prefect server is shared by the naive-Prefect peer and Parley (started once, on
PostgreSQL, through Parley's own ``Stack``), and every user and fake of the run is remembered
so the transcripts can be checked once more, all together, before anything is written.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from bench.harness import Chat, FigureError, PhoneBook, TimedFake, redeliveries
from bench.pg import Server
from bench.procs import CpuMeter
from bench.report import Report
from bench.snapshot import root
from devkit.stack.processes import Stack, StackError, free_port

DATA_DIR: Final = root() / ".parley" / "bench"
PREFECT_DB: Final = "prefect_bench"
PARLEY_DB: Final = "parley_bench"
DBOS_DB: Final = "dbos_bench"
FLOOR_DB: Final = "floor_bench"

# Secrets of the peers' loopback Graph API (Parley uses its own demo settings).
PEER_TOKEN: Final = "bench-access-token"
PEER_PHONE_NUMBER_ID: Final = "100000000000777"
PEER_APP_SECRET: Final = "bench-app-secret"


@dataclass(frozen=True)
class Plan:
    """Sample counts of one mode; ``make bench`` is ``full``, ``make bench-quick`` ``quick``."""

    mode: str
    floor_samples: int
    latency_chats: int  # conversations per latency figure (DBOS, Parley)
    latency_at_once: int  # of them under way at once; their turns still go one at a time
    dbos_throughput: int
    naive_chats: int
    webhook_contacts: int
    webhook_concurrency: int
    throughput_sizes: tuple[int, ...]
    replay_histories: tuple[int, ...]
    replay_chats: int
    idle_conversations: int
    idle_in_flight: int
    hot_seconds: float
    # Wall-time bounds where the counts outrun this machine (None: play to the end):
    # a throughput size is then measured over its budget, and the idle population is what
    # was greeted within its budget; both say so in the results.
    throughput_budget_s: float | None = None
    idle_budget_s: float | None = None

    @classmethod
    def full(cls) -> Plan:
        return cls(
            mode="full",
            floor_samples=200,
            latency_chats=12,
            latency_at_once=4,
            dbos_throughput=100,
            naive_chats=4,
            webhook_contacts=300,
            webhook_concurrency=30,
            throughput_sizes=(100, 1000),
            replay_histories=(10, 100, 500),
            replay_chats=3,
            idle_conversations=10_000,
            idle_in_flight=50,
            hot_seconds=20.0,  # Parley's default
            throughput_budget_s=240.0,
            idle_budget_s=60.0,
        )

    @classmethod
    def quick(cls) -> Plan:
        """Under three minutes on an otherwise idle 2-core machine."""
        return replace(
            cls.full(),
            mode="quick",
            floor_samples=20,
            latency_chats=4,
            latency_at_once=4,
            dbos_throughput=20,
            naive_chats=1,
            webhook_contacts=12,
            throughput_sizes=(12,),
            replay_histories=(10, 20),
            replay_chats=1,
            idle_conversations=12,
            hot_seconds=3.0,
            throughput_budget_s=None,
            idle_budget_s=None,
        )

    def reduced(self) -> str:
        """What this plan runs with fewer samples or smaller counts than the issue's (the full
        plan): printed with the settings, so a quick figure is never read as a full one."""
        full = Plan.full()
        smaller = [
            f"{name} {value} (full {full.__dict__[name]})"
            for name, value in self.__dict__.items()
            if name not in ("mode", "hot_seconds", "throughput_budget_s", "idle_budget_s")
            and value != full.__dict__[name]
        ]
        if not smaller:
            return "none: the issue's counts"
        return "smaller than the issue's: " + ", ".join(smaller)

    def with_samples(self, samples: int) -> Plan:
        """``--samples N``: small runs while developing a figure."""
        return replace(
            self,
            floor_samples=samples,
            latency_chats=samples,
            naive_chats=samples,
            replay_chats=max(1, samples // 3),
        )


@dataclass
class Context:
    plan: Plan
    pg: Server
    report: Report
    data_dir: Path = DATA_DIR
    profile: bool = False  # run Parley's worker and webhook under cProfile
    phones: PhoneBook = field(default_factory=PhoneBook)
    checked: list[tuple[str, str, TimedFake, list[Chat]]] = field(default_factory=list)
    services: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    parley: object | None = None  # the Parley stack, started by the first Parley figure
    prefect_pid: int | None = None
    _prefect_api: str | None = None

    @property
    def log_dir(self) -> Path:
        path = self.data_dir / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def meter(self, pids: dict[str, int]) -> CpuMeter:
        """CPU per process for one figure, the shared Prefect server included when running."""
        if self.prefect_pid is not None:
            pids = {"prefect-server": self.prefect_pid, **pids}
        return CpuMeter(pids).start()

    def remember(self, label: str, fake: TimedFake, chats: list[Chat]) -> None:
        self.checked.append((self.report.current, label, fake, chats))

    def recheck_all(self) -> None:
        """Late duplicates (a send retried seconds after its figure ended) take the figure
        back too: every transcript is compared once more, at the very end."""
        for figure, label, fake, chats in self.checked:
            wrong = [c.phone for c in chats if fake.texts(c.phone) != c.expected]
            if wrong and figure not in self.report.failed:
                self.report.fail(
                    figure,
                    f"{label}: transcripts changed after the figure ended (late duplicate?) "
                    f"for {wrong[:5]}: e.g. expected {chats[0].expected!r}, "
                    f"got {fake.texts(wrong[0])!r}",
                    retract=figure,
                )

    def redeliveries(self) -> dict[str, object]:
        """Webhook deliveries the harness had to repeat (5xx, broken connection), by figure."""
        out: dict[str, object] = {}
        for _figure, label, _fake, chats in self.checked:
            summary = redeliveries(chats)
            if summary["redeliveries"]:
                out[label] = summary
        return out or {"all figures": 0}

    def prefect_api(self) -> str:
        """The run's Prefect server on PostgreSQL, started on first use through Parley's
        ``Stack`` (so it is the server ``parley dev`` runs), stopped when the run ends."""
        if self._prefect_api is not None:
            return self._prefect_api
        self.pg.recreate(PREFECT_DB)
        port = free_port()
        stack = Stack(self.data_dir)
        stack.env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.pg.asyncpg_url(PREFECT_DB)
        stack.env["PREFECT_UI_ENABLED"] = "false"  # nobody looks; saves start-up time and CPU
        self.services.callback(stack.stop)
        print(f"starting the Prefect server on PostgreSQL ({PREFECT_DB}), port {port}...")
        started = time.monotonic()
        try:
            api = stack.start_prefect_server(port)
        except StackError as exc:
            raise FigureError(f"the Prefect server did not start: {exc}") from exc
        print(f"  Prefect server up in {time.monotonic() - started:.0f} s", flush=True)
        self.prefect_pid = stack.processes["prefect-server"].popen.pid
        os.environ["PREFECT_SERVER_API_PORT"] = str(port)
        os.environ["PREFECT_API_URL"] = api
        self._prefect_api = api
        return api
