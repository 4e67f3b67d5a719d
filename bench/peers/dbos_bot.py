"""The onboarding bot on DBOS Transact: one workflow per phone, ``DBOS.recv`` for each answer.

    python -m bench.peers.dbos_bot --port P --graph-url URL --database-url postgresql://… …

One process, as DBOS apps run: the webhook (verify the signature, then ``DBOS.send`` the text
to the workflow whose id derives from the phone, or start that workflow for a first message)
and the workflows themselves on the same event loop. Each send to the Graph API and the CRM
call is a step (checkpointed, retried); a workflow waiting in ``recv`` costs a coroutine and a
row, and wakes through DBOS's LISTEN/NOTIFY. Default DBOS settings throughout.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
from dbos import DBOS, DBOSConfig, SetWorkflowID
from dbos._error import DBOSNonExistentWorkflowError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from bench.peers.common import (
    PeerArgs,
    Refused,
    buttons_body,
    check_sent,
    graph_headers,
    parse_peer_args,
    read_answers,
    serve,
    text_body,
)
from bench.script import (
    ASK_EMAIL,
    ASK_PLAN,
    CONFIRM,
    EMAIL_ATTEMPTS,
    EMAIL_RETRY,
    EMAIL_UNREADABLE,
    GREETING,
    PLAN_BUTTONS,
    valid_email,
)

TOPIC: Final = "whatsapp"
FOREVER: Final = 7 * 24 * 3600.0  # a person may answer days later
_peer: dict[str, Any] = {}


def workflow_id(phone: str) -> str:
    return f"onboarding-{phone}"


@DBOS.step(retries_allowed=True, max_attempts=6)
async def send_message(body: dict[str, Any]) -> str:
    args: PeerArgs = _peer["args"]
    return check_sent(await _peer["http"].post(args.messages_url, json=body))


@DBOS.step(retries_allowed=True, max_attempts=6)
async def register(name: str, email: str, plan: str) -> Any:
    args: PeerArgs = _peer["args"]
    response = await _peer["http"].post(
        f"{args.crm_url}/crm/contacts", json={"name": name, "email": email, "plan": plan}
    )
    response.raise_for_status()
    return response.json()


async def answer() -> str:
    text = await DBOS.recv_async(TOPIC, timeout_seconds=FOREVER)
    return str(text or "")


@DBOS.workflow()
async def onboarding(phone: str) -> str:
    await send_message(text_body(phone, GREETING))
    name = await answer()
    await send_message(text_body(phone, ASK_EMAIL.format(name=name)))
    email = await answer()
    for _ in range(EMAIL_ATTEMPTS - 1):
        if valid_email(email):
            break
        await send_message(text_body(phone, EMAIL_RETRY))
        email = await answer()
    if not valid_email(email):
        await send_message(text_body(phone, EMAIL_UNREADABLE))
        return "email_unreadable"
    titles = {title for _, title in PLAN_BUTTONS}
    plan = ""
    while plan not in titles:
        await send_message(buttons_body(phone, ASK_PLAN.format(name=name), PLAN_BUTTONS))
        plan = await answer()
    await register(name, email, plan)
    await send_message(text_body(phone, CONFIRM.format(name=name, plan=plan)))
    return "completed"


async def deliver(phone: str, wamid: str, text: str) -> None:
    """Signal-with-start: the first message starts the phone's workflow, later ones are sent
    to it (Meta's message id as idempotency key, so a re-delivery is received once)."""
    wid = workflow_id(phone)
    try:
        await DBOS.send_async(wid, text, TOPIC, idempotency_key=wamid)
    except DBOSNonExistentWorkflowError:
        with SetWorkflowID(wid):
            await DBOS.start_workflow_async(onboarding, phone)


def build_app(args: PeerArgs) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        config: DBOSConfig = {"name": "bench-onboarding", "system_database_url": args.database_url}
        DBOS(config=config)
        DBOS.launch()
        _peer.update(args=args, http=httpx.AsyncClient(headers=graph_headers(args.access_token)))
        try:
            yield
        finally:
            await _peer["http"].aclose()
            DBOS.destroy(destroy_registry=False)

    async def webhook(request: Request) -> JSONResponse:
        raw = await request.body()
        try:
            answers = read_answers(raw, request.headers, args.app_secret)
        except Refused as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        for item in answers:
            await deliver(item.phone, item.wamid, item.text)
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
