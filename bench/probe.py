"""What Parley's own records say, next to what the simulated users saw.

Cold turns are taken only once the run is really suspended — ``suspended`` in Parley's row *and*
``PAUSED`` in Prefect — as a user answering minutes later would find it; a cold turn taken
while the run is still suspending would measure the webhook's resume retries instead. After a
figure, every message must be stored once in Parley's tables, whatever the transcripts say.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx
import psycopg

from bench.context import PARLEY_DB, Context
from bench.harness import Chat, FigureError


class Probe:
    """Reads Parley's rows and Prefect's run states: when a run is really suspended, and
    whether the database holds exactly the messages the users exchanged."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], http: httpx.AsyncClient, api: str):
        self.conn = conn
        self.http = http
        self.api = api

    @classmethod
    async def open(cls, ctx: Context, api: str) -> Probe:
        conn = await psycopg.AsyncConnection.connect(ctx.pg.dsn(PARLEY_DB), autocommit=True)
        return cls(conn, httpx.AsyncClient(timeout=30), api)

    async def close(self) -> None:
        await self.conn.close()
        await self.http.aclose()

    async def _conversation(self, phone: str) -> tuple[str, str | None]:
        cursor = await self.conn.execute(
            "SELECT c.status, c.flow_run_id FROM conversations c "
            "JOIN contacts ct ON ct.id = c.contact_id WHERE ct.address = %s "
            "ORDER BY c.id DESC LIMIT 1",
            (phone,),
        )
        row = await cursor.fetchone()
        return (str(row[0]), row[1]) if row else ("missing", None)

    async def flow_run_of(self, phone: str) -> str | None:
        """The flow run of the contact's latest conversation."""
        return (await self._conversation(phone))[1]

    async def _prefect_state(self, flow_run_id: str) -> str:
        response = await self.http.get(f"{self.api}/flow_runs/{flow_run_id}")
        response.raise_for_status()
        return str(response.json()["state"]["type"])

    async def wait_suspended(self, chat: Chat, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, flow_run_id = await self._conversation(chat.phone)
            if (
                status == "suspended"
                and flow_run_id
                and await self._prefect_state(flow_run_id) == "PAUSED"
            ):
                await asyncio.sleep(0.3)  # let the run's input schema land after PAUSED
                return
            await asyncio.sleep(0.1)
        raise FigureError(f"{chat.phone}: the run never suspended within {timeout:.0f}s")

    async def count(self, phones: Sequence[str], *statuses: str) -> int:
        cursor = await self.conn.execute(
            "SELECT count(*) FROM conversations c JOIN contacts ct ON ct.id = c.contact_id "
            "WHERE ct.address = ANY(%s) AND c.status = ANY(%s)",
            (list(phones), list(statuses)),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def statuses(self, phones: Sequence[str]) -> dict[str, int]:
        cursor = await self.conn.execute(
            "SELECT c.status, count(*) FROM conversations c JOIN contacts ct "
            "ON ct.id = c.contact_id WHERE ct.address = ANY(%s) GROUP BY c.status",
            (list(phones),),
        )
        return {str(row[0]): int(row[1]) for row in await cursor.fetchall()}

    async def diagnose(self, chats: Sequence[Chat]) -> str:
        """For a stalled figure: where the users' conversations are stuck."""
        phones = [c.phone for c in chats]
        cursor = await self.conn.execute(
            "SELECT c.status, c.flow_run_id IS NULL, count(*) FROM conversations c "
            "JOIN contacts ct ON ct.id = c.contact_id WHERE ct.address = ANY(%s) "
            "GROUP BY 1, 2 ORDER BY 3 DESC",
            (phones,),
        )
        rows = await cursor.fetchall()
        found = sum(int(row[2]) for row in rows)
        parts = [f"{row[2]} {row[0]}{' without a flow run' if row[1] else ''}" for row in rows]
        missing = len(phones) - found
        if missing:
            parts.append(f"{missing} never stored")
        return "Parley's conversations: " + ", ".join(parts)

    async def prefect_paused(self) -> int:
        body = {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
        response = await self.http.post(f"{self.api}/flow_runs/count", json=body)
        response.raise_for_status()
        return int(response.json())

    async def verify(
        self, figure: str, chats: Sequence[Chat], *statuses: str, timeout: float = 60.0
    ) -> None:
        """Every inbound message stored once, every reply recorded once, conversations where
        they should be (any status if none is given) — Parley's side of "nothing lost, nothing
        duplicated". A run records its end just after its last reply, so a busy machine gets
        ``timeout`` seconds to catch up before a disagreement fails the figure."""
        deadline = time.monotonic() + timeout
        while wrong := await self._disagreements(chats, statuses):
            if time.monotonic() > deadline:
                raise FigureError(
                    f"{figure}: Parley's database disagrees with the transcripts "
                    f"{timeout:.0f} s after the last reply; refusing to report it:\n  "
                    + "\n  ".join(wrong[:10])
                )
            await asyncio.sleep(0.5)

    async def _disagreements(self, chats: Sequence[Chat], statuses: Sequence[str]) -> list[str]:
        phones = [c.phone for c in chats]
        cursor = await self.conn.execute(
            "SELECT ct.address, m.direction, count(*) FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id "
            "JOIN contacts ct ON ct.id = c.contact_id WHERE ct.address = ANY(%s) "
            "GROUP BY ct.address, m.direction",
            (phones,),
        )
        counts = {(row[0], row[1]): int(row[2]) for row in await cursor.fetchall()}
        wrong = [
            f"{c.phone}: in {counts.get((c.phone, 'in'), 0)}/{c.sent}, "
            f"out {counts.get((c.phone, 'out'), 0)}/{len(c.expected)}"
            for c in chats
            if counts.get((c.phone, "in"), 0) != c.sent
            or counts.get((c.phone, "out"), 0) != len(c.expected)
        ]
        if statuses:
            by_status = await self.statuses(phones)
            unexpected = {k: v for k, v in by_status.items() if k not in statuses}
            if unexpected:
                wrong.append(f"conversations not {'/'.join(statuses)}: {unexpected}")
        return wrong
