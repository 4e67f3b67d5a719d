"""The onboarding bot written the obvious way on Prefect: suspend every turn, replay on resume.

    python -m bench.peers.naive_prefect serve      # flow.serve(): one new process per run start
    python -m bench.peers.naive_prefect webhook --port P …   # verify, then start/resume the run

What a Prefect user would write first from the docs: every question ends in
``suspend_flow_run(wait_for_input=...)``; a resume starts the flow again *from the top* in a new
process, where every earlier task returns its persisted, cached result and every earlier suspend
returns the input it was given, until the flow reaches the next new question. Served with
``flow.serve()`` and Prefect's DEFAULT settings (runner poll every 10 s), and fronted by a
minimal webhook that verifies the signature and creates or resumes the phone's run with the
message as run input. This is the baseline Parley's in-process worker and hot wait exist to beat.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Final
from uuid import UUID

import httpx
from prefect import flow, task
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput

from bench.peers.common import buttons_body, check_sent, graph_headers, text_body
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

FLOW_NAME: Final = "naive-onboarding"
DEPLOYMENT: Final = f"{FLOW_NAME}/{FLOW_NAME}"
ENV_PREFIX: Final = "BENCH_NAIVE_"  # the served process passes these to every flow-run process


class Reply(RunInput):
    text: str


def _setting(name: str) -> str:
    return os.environ[f"{ENV_PREFIX}{name}"]


@task(persist_result=True, retries=3, retry_delay_seconds=1)
def send_message(step: int, body: dict[str, Any]) -> str:
    """``step`` keeps two identical texts (a repeated question) from sharing a cache entry."""
    url = f"{_setting('GRAPH_URL')}/{_setting('PHONE_NUMBER_ID')}/messages"
    with httpx.Client(headers=graph_headers(_setting("ACCESS_TOKEN")), timeout=10) as http:
        return check_sent(http.post(url, json=body))


@task(persist_result=True, retries=3, retry_delay_seconds=1)
def register(name: str, email: str, plan: str) -> dict[str, Any]:
    with httpx.Client(timeout=10) as http:
        response = http.post(
            f"{_setting('CRM_URL')}/crm/contacts",
            json={"name": name, "email": email, "plan": plan},
        )
        response.raise_for_status()
        return dict(response.json())


@flow(name=FLOW_NAME, persist_result=True)
def naive_onboarding(phone: str) -> str:
    steps = iter(range(1000))

    def say(body: dict[str, Any]) -> None:
        send_message(next(steps), body)

    def answer() -> str:
        return suspend_flow_run(wait_for_input=Reply, key=f"answer-{next(steps)}").text

    say(text_body(phone, GREETING))
    name = answer()
    say(text_body(phone, ASK_EMAIL.format(name=name)))
    email = answer()
    for _ in range(EMAIL_ATTEMPTS - 1):
        if valid_email(email):
            break
        say(text_body(phone, EMAIL_RETRY))
        email = answer()
    if not valid_email(email):
        say(text_body(phone, EMAIL_UNREADABLE))
        return "email_unreadable"
    titles = {title for _, title in PLAN_BUTTONS}
    plan = ""
    while plan not in titles:
        say(buttons_body(phone, ASK_PLAN.format(name=name), PLAN_BUTTONS))
        plan = answer()
    register(name, email, plan)
    say(text_body(phone, CONFIRM.format(name=name, plan=plan)))
    return "completed"


# --- the minimal webhook ------------------------------------------------------------------------


class NaiveWebhook:
    """Verify, then start the phone's run (first message) or resume it with the text as run
    input. Its phone → run map lives in memory: minimal, as a first version would be."""

    def __init__(self, app_secret: str) -> None:
        self.app_secret = app_secret
        self.runs: dict[str, UUID] = {}
        self.seen: set[str] = set()

    async def resume(self, run_id: UUID, text: str) -> None:
        """The run may still be on its way to Paused (the question went out first): retry."""
        from prefect.exceptions import NotPausedError, ObjectNotFound
        from prefect.flow_runs import aresume_flow_run

        for _ in range(1200):
            try:
                await aresume_flow_run(run_id, run_input={"text": text})
                return
            except (NotPausedError, ObjectNotFound):
                pass
            except RuntimeError as exc:  # "Run input schema not found": not paused yet
                if "schema not found" not in str(exc):
                    raise
            await asyncio.sleep(0.1)
        print(f"gave up resuming {run_id}", file=sys.stderr)

    async def start(self, phone: str) -> UUID:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            deployment = await client.read_deployment_by_name(DEPLOYMENT)
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"phone": phone}, idempotency_key=f"naive-{phone}"
            )
        return run.id

    async def receive(self, request: Any) -> Any:
        from starlette.background import BackgroundTasks
        from starlette.responses import JSONResponse

        from bench.peers.common import Refused, read_answers

        raw = await request.body()
        try:
            answers = read_answers(raw, request.headers, self.app_secret)
        except Refused as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        background = BackgroundTasks()
        for item in answers:
            if item.wamid in self.seen:
                continue
            self.seen.add(item.wamid)
            if item.phone not in self.runs:
                self.runs[item.phone] = await self.start(item.phone)
            else:
                background.add_task(self.resume, self.runs[item.phone], item.text)
        return JSONResponse({"ok": True}, background=background)

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def healthz(_request: Any) -> PlainTextResponse:
            return PlainTextResponse("ok")

        return Starlette(
            routes=[
                Route("/webhooks/whatsapp", self.receive, methods=["POST"]),
                Route("/healthz", healthz),
            ]
        )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        naive_onboarding.serve(name=FLOW_NAME)
        return
    if argv[:1] == ["webhook"]:
        from bench.peers.common import parse_peer_args, serve

        args, _ = parse_peer_args(argv[1:], "naive Prefect webhook")
        serve(NaiveWebhook(args.app_secret).app(), args.port)
        return
    raise SystemExit("usage: python -m bench.peers.naive_prefect serve|webhook --port …")


if __name__ == "__main__":
    main()
