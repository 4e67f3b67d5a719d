"""Bringing the local stack up for ``parley dev`` and ``parley demo``."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from parley.db import migrate
from parley.local.processes import Stack, api_is_healthy
from parley.settings import Settings
from parley.testing.whatsapp_fake import FakeWhatsAppAPI

DEFAULT_PREFECT_PORT = 4200
console = Console()


@dataclass
class RunningStack:
    stack: Stack
    fake_whatsapp: FakeWhatsAppAPI | None

    @property
    def ui_url(self) -> str:
        assert self.stack.api_url
        return self.stack.api_url.removesuffix("/api")

    def stop(self) -> None:
        self.stack.stop()
        if self.fake_whatsapp is not None:
            self.fake_whatsapp.stop()


def _is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in {"127.0.0.1", "localhost", "::1"}


def _start_fake_whatsapp(settings: Settings) -> FakeWhatsAppAPI:
    parts = urlsplit(settings.whatsapp_api_url)
    fake = FakeWhatsAppAPI(
        port=parts.port or 80,
        access_token=settings.whatsapp_access_token.get_secret_value(),
        phone_number_id=settings.whatsapp_phone_number_id,
        webhook_url=f"{settings.webhook_url}/webhooks/whatsapp",
        app_secret=settings.whatsapp_app_secret.get_secret_value(),
        version=parts.path.strip("/") or "v21.0",
    )
    fake.start()
    return fake


def bring_up(settings: Settings, *, prefect_port: int = DEFAULT_PREFECT_PORT) -> RunningStack:
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[dim]database: {settings.resolved_database_url}[/]")
    migrate.upgrade(settings.resolved_database_url)
    stack = Stack(data_dir)
    fake = None
    try:
        external = os.environ.get("PREFECT_API_URL")
        if external and api_is_healthy(external):
            console.print(f"[dim]using the Prefect API at {external}[/]")
            stack.use_prefect_api(external, data_dir / "prefect")
        else:
            console.print("[dim]starting the Prefect server (first start takes ~20 s)...[/]")
            stack.start_prefect_server(prefect_port)
        if _is_loopback(settings.whatsapp_api_url):
            fake = _start_fake_whatsapp(settings)
            console.print(f"[dim]fake WhatsApp Cloud API at {fake.api_url}[/]")
        console.print("[dim]starting the worker and the webhook...[/]")
        stack.start_worker()
        stack.wait_for_deployment(settings.conversation_deployment)
        stack.start_webhook(settings.webhook_host, settings.webhook_port)
    except BaseException:
        stack.stop()
        if fake is not None:
            fake.stop()
        raise
    return RunningStack(stack, fake)


def run_dev(settings: Settings) -> int:
    # Handlers first: a Ctrl-C while the stack is still coming up stops it cleanly too.
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    running = bring_up(settings)
    console.print(
        f"[green]Parley is up.[/] Prefect UI: {running.ui_url}  webhook: "
        f"{settings.webhook_url}/webhooks/whatsapp  logs: {running.stack.log_dir}\n"
        "Ctrl-C stops everything."
    )
    try:
        while not stopped.wait(1.0):
            dead = [p.name for p in running.stack.processes.values() if not p.alive()]
            if dead:
                console.print(f"[red]{', '.join(dead)} exited; see {running.stack.log_dir}[/]")
                return 1
        return 0
    finally:
        console.print("[dim]stopping...[/]")
        running.stop()
