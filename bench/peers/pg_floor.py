"""The physical floor: one PostgreSQL transaction storing the message and the reply, then the
reply's POST to the Graph API — nothing a durable bot could skip on this machine.

    python -m bench.peers.pg_floor --port P --graph-url URL --database-url postgresql://… …

Its webhook verifies the signature, stores the inbound message and the reply in one
transaction (a re-delivered message changes nothing), sends the reply, then answers 200. Any
durable bot pays at least this per turn; the distance to it is what durability costs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from bench.peers.common import (
    PeerArgs,
    Refused,
    check_sent,
    graph_headers,
    parse_peer_args,
    read_answers,
    serve,
    text_body,
)
from bench.script import ECHO_REPLY

SCHEMA = """
CREATE TABLE IF NOT EXISTS floor_messages (
    id bigserial PRIMARY KEY,
    wamid text UNIQUE,
    phone text NOT NULL,
    direction text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


def build_app(args: PeerArgs) -> Starlette:
    state: dict[str, Any] = {}
    lock = asyncio.Lock()  # one connection: the floor is measured one turn at a time

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        conn = await psycopg.AsyncConnection.connect(args.database_url, autocommit=True)
        await conn.execute(SCHEMA)
        http = httpx.AsyncClient(headers=graph_headers(args.access_token), timeout=10)
        state.update(conn=conn, http=http)
        try:
            yield
        finally:
            await http.aclose()
            await conn.close()

    async def store(conn: psycopg.AsyncConnection[Any], phone: str, wamid: str, text: str) -> bool:
        async with lock, conn.transaction():
            cursor = await conn.execute(
                "INSERT INTO floor_messages (wamid, phone, direction, body) "
                "VALUES (%s, %s, 'in', %s) ON CONFLICT (wamid) DO NOTHING RETURNING id",
                (wamid, phone, text),
            )
            if await cursor.fetchone() is None:
                return False  # a re-delivery: already answered
            await conn.execute(
                "INSERT INTO floor_messages (phone, direction, body) VALUES (%s, 'out', %s)",
                (phone, ECHO_REPLY.format(msg=text)),
            )
        return True

    async def webhook(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            answers = read_answers(raw, request.headers, args.app_secret)
        except Refused as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        for answer in answers:
            if await store(state["conn"], answer.phone, answer.wamid, answer.text):
                body = text_body(answer.phone, ECHO_REPLY.format(msg=answer.text))
                check_sent(await state["http"].post(args.messages_url, json=body))
        return JSONResponse({"ok": True})

    async def healthz(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/webhooks/whatsapp", webhook, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    args, _ = parse_peer_args(argv, __doc__.splitlines()[0] if __doc__ else "")
    serve(build_app(args), args.port)


if __name__ == "__main__":
    main()
