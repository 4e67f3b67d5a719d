"""The benchmark's output: one table for people, one small JSON for the repository.

Settings are part of every result (versions, poll intervals, hot window, samples, cores,
databases): a latency without the hot window and poll interval it was measured with means
nothing, and ``bench/results/latest.json`` is meant to be committed and compared.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSONDict = dict[str, Any]

# key → (label, what it measures), in the order the table prints them.
FIGURES: dict[str, tuple[str, str]] = {
    "pg_floor_ms": ("floor", "one PG transaction (message + reply) + the reply POST"),
    "dbos_cold_start_ms": ("DBOS first message", "webhook starts the phone's workflow"),
    "dbos_turn_ms": ("DBOS turn", "DBOS.send → DBOS.recv → step POSTs the reply"),
    "hot_turn_ms": ("Parley hot turn", "run waiting in-process (hot window)"),
    "cold_turn_ms": ("Parley cold turn", "run had suspended; webhook resumes it"),
    "cold_start_ms": ("Parley cold start", "first message: the flow run is created"),
    "naive_prefect_cold_start_ms": ("naive Prefect first message", "flow.serve(), new process"),
    "naive_prefect_turn_ms": ("naive Prefect turn", "suspend every turn, replay from the top"),
    "webhook_ack_ms": ("Parley webhook ack", "signed POST → 200, new contacts"),
}


@dataclass
class Report:
    mode: str
    settings: JSONDict = field(default_factory=dict)
    figures: JSONDict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cpu_s: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    current: str = ""  # the figure running now: what ``add`` files its keys under
    _keys: dict[str, list[str]] = field(default_factory=dict)

    def add(self, key: str, value: Any) -> None:
        self.figures[key] = value
        self._keys.setdefault(self.current, []).append(key)
        print(f"  {key}: {json.dumps(value)}", flush=True)

    def fail(self, figure: str, reason: str, *, retract: str | None = None) -> None:
        """A figure that lost or duplicated a message (or whose peer failed) is not reported:
        its numbers are taken back and the reason is what the JSON and table say instead."""
        self.failed[figure] = reason[:2000]
        for key in self._keys.pop(retract, []) if retract else []:
            self.figures.pop(key, None)
        print(f"\n  FIGURE FAILED — {figure}: {reason}\n", flush=True)

    def add_cpu(self, figure: str, seconds: dict[str, float]) -> None:
        """Where a figure's time went: CPU seconds per process while it ran."""
        self.cpu_s[figure] = seconds
        print(f"  cpu s: {_flat(seconds)}", flush=True)

    def as_json(self) -> JSONDict:
        return {
            "mode": self.mode,
            "failed": self.failed,
            **self.figures,
            "settings": self.settings,
            "cpu_s_by_figure": self.cpu_s,
            "notes": self.notes,
        }

    def write(self, path: Path) -> None:
        """One line per figure, so a commit's diff reads as "this figure changed"."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in self.as_json().items()
        ]
        path.write_text("{\n" + ",\n".join(lines) + "\n}\n")

    def table(self) -> str:
        lines = [f"Parley benchmark ({self.mode})", ""]
        lines += [f"  {key:<34} {_flat(value)}" for key, value in self.settings.items()]
        lines += ["", f"  {'figure':<30} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'n':>6}  what"]
        for key, (label, what) in FIGURES.items():
            value = self.figures.get(key)
            if not isinstance(value, dict):
                continue
            cells = [_ms(value.get(q)) for q in ("p50", "p95", "p99")]
            lines.append(f"  {label:<30} {cells[0]} {cells[1]} {cells[2]} {value['n']:>6}  {what}")
        lines.append("")
        for key in (
            "throughput_turns_per_s",
            "throughput_detail",
            "dbos_throughput_turns_per_s",
            "starts_per_s",
            "resume_ms_by_history",
            "hot_turn_ms_by_history",
            "idle",
            "prefect_rows_written_per_turn",
            "prefect_rows_written_per_conversation_start",
            "parley_log_anomalies",
            "webhook_redeliveries",
        ):
            if key in self.figures:
                lines.append(f"  {key:<30} {_flat(self.figures[key])}")
        if self.cpu_s:
            lines += ["", "  CPU seconds per process while each figure ran:"]
            lines += [f"  {name:<30} {_flat(cpu)}" for name, cpu in self.cpu_s.items()]
        lines += [f"  note: {note}" for note in self.notes]
        for figure, reason in self.failed.items():
            lines.append(f"  FAILED {figure}: {reason.splitlines()[0][:300]}")
        return "\n".join(lines)


def _ms(value: Any) -> str:
    return f"{value:>9.1f}" if isinstance(value, int | float) else f"{'':>9}"


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "/".join(_flat(v) for v in value)
    return str(value)


def cores() -> int:
    return len(os.sched_getaffinity(0))
