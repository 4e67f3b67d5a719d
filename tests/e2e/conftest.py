"""End-to-end stacks: a real worker and a real webhook (subprocesses) against the session's
Prefect server, a loopback fake of the WhatsApp Cloud API and a loopback CRM.

Each stack serves its own deployment name so several stacks share one Prefect server without
picking up each other's runs.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from devkit.fakes.recording_endpoint import RecordingEndpoint
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_user import WhatsAppUser
from devkit.stack.processes import Stack, free_port
from parley.conversation import operator_views as views
from parley.db import Database

ROOT = Path(__file__).resolve().parents[2]
ONBOARDING = ROOT / "examples" / "campaigns" / "onboarding.yaml"
APP_SECRET = "test-app-secret"
API_KEY = "test-api-key"
NEXT_API_KEY = "test-api-key-next"  # listed beside the old one, as during a rotation
PHONE_NUMBER_ID = "100000000000777"
_phones = itertools.count(1)


@dataclass
class E2EStack:
    name: str
    db_url: str
    env: dict[str, str]
    fake: FakeWhatsAppAPI
    crm: RecordingEndpoint
    stack: Stack
    webhook_port: int
    users: list[WhatsAppUser] = field(default_factory=list)
    worker_env: dict[str, str] | None = None  # e.g. its database or Prefect behind a proxy
    shared: bool = False  # the session's pg_stack: outlives the module that started it
    stopped: bool = False

    async def api(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """The operator REST API of this stack, with the test key."""
        async with httpx.AsyncClient(timeout=60) as client:
            return await client.request(
                method,
                f"http://127.0.0.1:{self.webhook_port}{path}",
                json=body,
                headers={"Authorization": f"Bearer {API_KEY}"},
            )

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}/webhooks/whatsapp"

    def user(self, name: str = "Alice") -> WhatsAppUser:
        phone = f"4915{os.getpid() % 1000:03d}{next(_phones):06d}"
        user = WhatsAppUser(
            phone=phone,
            name=name,
            webhook_url=self.webhook_url,
            app_secret=APP_SECRET,
            phone_number_id=PHONE_NUMBER_ID,
            fake=self.fake,
        )
        self.users.append(user)
        return user

    def start_worker(self) -> None:
        self.stack.start_worker(extra_env=self.worker_env)

    def kill_worker(self) -> None:
        self.stack.kill("worker")

    async def conversation_of(self, user: WhatsAppUser) -> dict[str, Any]:
        db = Database(self.db_url)
        try:
            rows = [r for r in await views.list_conversations(db) if r["contact"] == user.phone]
            assert rows, f"no conversation for {user.phone}"
            return await views.show_conversation(db, rows[0]["id"])
        finally:
            await db.dispose()

    async def wait_for_status(
        self, user: WhatsAppUser, status: str, timeout: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        detail: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                detail = await self.conversation_of(user)
            except AssertionError:
                detail = {}
            if detail.get("status") == status:
                return detail
            await asyncio.sleep(0.1)
        raise AssertionError(f"{user.phone} never reached {status!r}: {detail.get('status')}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.stack.stop()
        self.fake.stop()
        self.crm.stop()


@pytest.fixture(scope="session")
def stack_factory(
    prefect_server: str, database_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    stacks: list[E2EStack] = []

    def start(
        backend: str = "postgresql",
        *,
        hot_wait: float = 2.0,
        extra_env: dict[str, str] | None = None,
        campaign: Path | None = None,
        prefect_api_url: str | None = None,
        worker_env: dict[str, str] | None = None,
        worker_database_port: int | None = None,
        worker_started: Callable[[E2EStack], None] | None = None,
    ) -> E2EStack:
        name = f"e2e-{uuid.uuid4().hex[:6]}"
        directory = tmp_path_factory.mktemp(name)
        db_url = database_factory(backend)
        webhook_port = free_port()
        crm = RecordingEndpoint().start()
        fake = FakeWhatsAppAPI(
            access_token="test-token",
            phone_number_id=PHONE_NUMBER_ID,
            webhook_url=f"http://127.0.0.1:{webhook_port}/webhooks/whatsapp",
            app_secret=APP_SECRET,
        )
        fake.start()
        env = {
            "PARLEY_DATABASE_URL": db_url,
            "PARLEY_DATA_DIR": str(directory),
            "PARLEY_WHATSAPP_API_URL": fake.api_url,
            "PARLEY_WHATSAPP_ACCESS_TOKEN": "test-token",
            "PARLEY_WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
            "PARLEY_WHATSAPP_APP_SECRET": APP_SECRET,
            "PARLEY_WHATSAPP_VERIFY_TOKEN": "test-verify-token",
            "PARLEY_DEFAULT_CAMPAIGN": str(campaign or ONBOARDING),
            "CRM_URL": crm.url,
            "PARLEY_CONVERSATION_DEPLOYMENT": f"conversation/{name}",
            "PARLEY_DISPATCHER_DEPLOYMENT": f"dispatcher/{name}",
            "PARLEY_DISPATCHER_LIMIT": f"parley-dispatcher-{name}",
            # Every stack's database numbers its identities from 1, and the stacks of a test
            # worker share one Prefect server: one stack's identity 2 must not hold another's.
            "PARLEY_IDENTITY_LIMIT_PREFIX": f"identity-{name}-",
            "PARLEY_DISPATCHER_INTERVAL_SECONDS": "30",
            "PARLEY_DISPATCHER_TICK_SECONDS": "0.5",
            "PARLEY_API_KEYS": f"{API_KEY},{NEXT_API_KEY}",
            "PARLEY_HOT_WAIT_SECONDS": str(hot_wait),
            "PARLEY_LEASE_SECONDS": "3",
            "PARLEY_SEND_RECONCILE_SECONDS": "10",
            "PARLEY_RESUME_RETRY_SECONDS": "30",
            **(extra_env or {}),
        }
        if worker_database_port is not None:  # the worker reaches PostgreSQL through a proxy
            proxied = make_url(db_url).set(port=worker_database_port)
            worker_env = {
                **(worker_env or {}),
                "PARLEY_DATABASE_URL": proxied.render_as_string(hide_password=False),
            }
        stack = Stack(directory, env=dict(env))
        stack.use_prefect_api(prefect_server, Path(os.environ["PREFECT_HOME"]))
        handle = E2EStack(name, db_url, env, fake, crm, stack, webhook_port, worker_env=worker_env)
        stacks.append(handle)
        handle.start_worker()
        if worker_started is not None:  # e.g. its Prefect is down: see it wait, then open it
            worker_started(handle)
        stack.wait_for_deployment(env["PARLEY_CONVERSATION_DEPLOYMENT"])
        webhook_env = {"PREFECT_API_URL": prefect_api_url} if prefect_api_url else None
        stack.start_webhook("127.0.0.1", webhook_port, webhook_env)
        return handle

    start.stacks = stacks  # type: ignore[attr-defined]
    yield start
    for handle in stacks:
        handle.stop()


@pytest.fixture(scope="session")
def pg_stack(stack_factory: Any) -> E2EStack:
    """The shared PostgreSQL stack most scenarios run on (each with its own phone numbers)."""
    stack: E2EStack = stack_factory("postgresql")
    stack.shared = True
    return stack


@pytest.fixture(scope="module", autouse=True)
def _stacks_die_with_their_module(stack_factory: Any) -> Iterator[None]:
    """A module's own stacks stop when it ends: on two cores, idle workers and dispatchers of
    finished modules polling Prefect would slow every later test down."""
    before = len(stack_factory.stacks)
    yield
    for handle in stack_factory.stacks[before:]:
        if not handle.shared:
            handle.stop()


async def eventually(what: str, ready: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Poll ``ready`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await ready():
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {timeout} s: {what}")
