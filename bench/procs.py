"""The peers' processes: spawned by the harness, each in its own session, always stopped.

Every peer runs as real processes (its webhook, its worker) so it pays what it would pay in
production: imports, sockets, its own event loop. Each process gets its own session so a stop
reaches the children it started (a process-per-run worker's flow runs) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx


class PeerError(RuntimeError):
    """A peer did not start (or died): the figure cannot be measured, so the run stops."""


@dataclass
class Service:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the session we started, then SIGKILL if it does not go in time; children
        that outlive it (a process-per-run worker's flow runs) are killed by their own pid,
        and only while they are still in our session."""
        session = self.popen.pid
        family = descendants(session)
        if self.alive():
            with _gone_ok():
                os.killpg(session, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with _gone_ok():
                    os.killpg(session, signal.SIGKILL)
                self.popen.wait(timeout=5)
        for pid in family:
            with _gone_ok():
                if os.getpgid(pid) == session:
                    os.kill(pid, signal.SIGKILL)


class _gone_ok:
    """``ProcessLookupError`` means the process group is already gone: that is the goal."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, ProcessLookupError | PermissionError)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def spawn(name: str, args: list[str], *, env: Mapping[str, str], log_dir: Path) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            args,
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, popen, log_path)


def wait_until(ready: Callable[[], bool], service: Service, *, timeout: float) -> None:
    """Fail fast: a peer that exits or never answers stops the benchmark with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not service.alive():
            raise PeerError(
                f"{service.name} exited early (see {service.log_path}):\n{service.tail()}"
            )
        time.sleep(0.2)
    raise PeerError(
        f"{service.name} not ready within {timeout:.0f}s "
        f"(see {service.log_path}):\n{service.tail()}"
    )


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def environment(*, drop_prefixes: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """The harness environment minus tuned settings a "default" peer must not inherit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    env.update(extra)
    return env


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``): the stack's and any a worker spawned."""
    out: list[int] = []
    stack = children(pid)
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(children(current))
    return out


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, with_children: bool = True) -> float:
    """User + system CPU of a process (and, by default, of its children it has reaped — a
    process-per-run worker's flow runs), from ``/proc/<pid>/stat``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    # fields[0] is the state (stat field 3): utime, stime, cutime, cstime are fields 14-17.
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    total = utime + stime + (cutime + cstime if with_children else 0)
    return total / _TICKS


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's live threads spent runnable but waiting for a core (schedstat):
    how much a figure was slowed by the machine being busy rather than by its own work."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int((task / "schedstat").read_text().split()[1])
    except OSError:
        return 0.0
    return total / 1e9


class CpuMeter:
    """CPU seconds each named process spent between ``start()`` and ``stop()``: where a
    figure's time went (a profile without a profiler)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        sample["waited for a core"] = sum(map(runqueue_wait_seconds, self.pids.values()))
        sample["harness"] = sum(os.times()[:2])
        sample["machine"] = machine_cpu_seconds()
        sample["wall"] = time.monotonic()
        return sample

    def start(self) -> CpuMeter:
        self._start = self._sample()
        return self

    def stop(self) -> dict[str, float]:
        """Per process, plus what everything else on the machine used meanwhile (other
        people's test suites share these cores) and the wall time."""
        end = self._sample()
        spent = {name: end[name] - self._start.get(name, 0.0) for name in end}
        machine, wall = spent.pop("machine"), spent.pop("wall")
        waited = spent.pop("waited for a core")
        spent["everything else"] = max(0.0, machine - sum(spent.values()))  # PostgreSQL too
        spent["wall"] = wall
        spent["waited for a core"] = waited
        return {name: round(value, 1) for name, value in spent.items()}


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (all cores) from ``/proc/stat``."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS
