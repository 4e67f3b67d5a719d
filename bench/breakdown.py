"""Where one turn's time goes: the median hot turn, cold turn and cold start, laid out as a
timeline of what Prefect recorded about the conversation's run while the user waited.

Every mark is a timestamp taken on this machine: the harness's own (POST start, the webhook's
200, the reply at the loopback Graph API) and the ones Prefect stored for the run (its state
changes: resumed/Scheduled, Pending when the worker claimed it, Running; each task run's start
and end). The gaps between consecutive marks are the breakdown; nothing is estimated.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from statistics import median_low
from typing import Any

import httpx

from bench.harness import Chat, Turn

Mark = tuple[float, str]  # (wall-clock seconds, what happened)


async def turn_breakdowns(
    chats: Sequence[Chat], flow_runs: dict[str, str], api: str
) -> dict[str, Any]:
    """``flow_runs`` maps a chat's phone to its conversation's flow run id."""
    offset = time.time() - time.perf_counter()  # harness perf_counter → wall clock
    found: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        for kind in ("hot", "cold", "start"):
            picked = _median_turn(chats, kind)
            if picked is None or picked[0].phone not in flow_runs:
                continue
            chat, turn = picked
            marks = await _prefect_marks(http, flow_runs[chat.phone])
            found[kind] = _timeline(turn, offset, marks)
    return found


def _median_turn(chats: Sequence[Chat], kind: str) -> tuple[Chat, Turn] | None:
    turns = [(c, t) for c in chats for t in c.turns if t.kind == kind]
    if not turns:
        return None
    middle = median_low([t.latency for _, t in turns])
    return next((c, t) for c, t in turns if t.latency == middle)


async def _prefect_marks(http: httpx.AsyncClient, flow_run_id: str) -> list[Mark]:
    marks: list[Mark] = []
    states = (await http.get("/flow_run_states/", params={"flow_run_id": flow_run_id})).json()
    for state in states:
        marks.append((_wall(state["timestamp"]), f"flow run {state['name']}"))
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}
    for task_run in (await http.post("/task_runs/filter", json=body)).json():
        if task_run.get("start_time"):
            marks.append((_wall(task_run["start_time"]), f"{task_run['name']} started"))
        if task_run.get("end_time"):
            marks.append((_wall(task_run["end_time"]), f"{task_run['name']} ended"))
    return marks


def _wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _timeline(turn: Turn, offset: float, marks: list[Mark]) -> dict[str, Any]:
    """The marks inside the turn, in order, each with the milliseconds since the previous."""
    start = turn.started + offset
    reply = start + turn.latency
    inside = sorted(m for m in marks if start < m[0] < reply)
    points = [(start + turn.ack, "webhook answered 200"), *inside, (reply, "reply at the provider")]
    points.sort()
    steps, previous = [], start
    for at, what in points:
        steps.append({"what": what, "ms": round((at - previous) * 1000, 1)})
        previous = at
    return {"total_ms": round(turn.latency * 1000, 1), "timeline": steps}


def render(breakdowns: dict[str, Any]) -> list[str]:
    lines = []
    for kind, found in breakdowns.items():
        parts = " · ".join(f"+{step['ms']:g} {step['what']}" for step in found["timeline"])
        lines.append(f"  {kind} ({found['total_ms']:g} ms, the median): {parts}")
    return lines
