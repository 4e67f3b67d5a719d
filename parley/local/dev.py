"""Bringing the local stack up for ``parley dev`` and ``parley demo``.

Real processes (Prefect server, worker, webhook) plus loopback stand-ins for what a developer's
machine lacks: the WhatsApp Cloud API and the endpoints the default campaign calls (its
``env:`` URLs, e.g. the example CRM). A stand-in starts only where nothing answers already — a
developer's own mock or a tunnel keeps its port — unless ``--fake-providers`` /
``--no-fake-providers`` says otherwise. Every port Parley needs is checked first, and a busy
one is named together with the setting that moves it.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from parley.campaign import load_campaign
from parley.db import migrate
from parley.local.processes import Stack, StackError, api_is_healthy
from parley.settings import Settings, is_loopback
from parley.testing.recording_endpoint import RecordingEndpoint
from parley.testing.whatsapp_fake import FakeWhatsAppAPI

DEFAULT_PREFECT_PORT = 4200
console = Console()


@dataclass
class RunningStack:
    stack: Stack
    fake_whatsapp: FakeWhatsAppAPI | None
    endpoints: dict[str, RecordingEndpoint] = field(default_factory=dict)

    @property
    def ui_url(self) -> str:
        assert self.stack.api_url
        return self.stack.api_url.removesuffix("/api")

    def stop(self) -> None:
        self.stack.stop()
        if self.fake_whatsapp is not None:
            self.fake_whatsapp.stop()
        for endpoint in self.endpoints.values():
            endpoint.stop()


def prefect_port() -> int:
    """Prefect's own setting for its server port, so ``parley dev`` goes where Prefect would."""
    return int(os.environ.get("PREFECT_SERVER_API_PORT") or DEFAULT_PREFECT_PORT)


def listening(host: str, port: int) -> bool:
    """Something accepts connections there (a server of ours, or somebody else's)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.hostname or "127.0.0.1", parts.port or default


def _wants_stand_in(url: str, fake_providers: bool | None) -> bool:
    if fake_providers is not None:
        return fake_providers and is_loopback(url)
    return is_loopback(url) and not listening(*_host_port(url))


def _refuse_busy(port: int, host: str, what: str) -> None:
    if listening(host, port):
        raise StackError(f"port {port} on {host} is in use by another program; {what}")


def _start_fake_whatsapp(settings: Settings) -> FakeWhatsAppAPI:
    parts = urlsplit(settings.whatsapp_api_url)
    host, port = _host_port(settings.whatsapp_api_url)
    _refuse_busy(port, host, "stop it, use --no-fake-providers, or change PARLEY_WHATSAPP_API_URL")
    fake = FakeWhatsAppAPI(
        host=host,
        port=port,
        access_token=settings.whatsapp_access_token.get_secret_value(),
        phone_number_id=settings.whatsapp_phone_number_id,
        webhook_url=f"{settings.webhook_url}/webhooks/whatsapp",
        app_secret=settings.whatsapp_app_secret.get_secret_value(),
        version=parts.path.strip("/") or "v21.0",
    )
    fake.start()
    return fake


def _campaign_endpoints(settings: Settings, fake_providers: bool | None) -> dict[str, str]:
    """The default campaign's ``env:`` URLs that a loopback stand-in should serve."""
    campaign = load_campaign(settings.default_campaign)
    urls = {name: os.environ.get(name, default) for name, default in campaign.env.items()}
    return {
        name: url
        for name, url in urls.items()
        if url.startswith(("http://", "https://")) and _wants_stand_in(url, fake_providers)
    }


def _start_endpoints(urls: dict[str, str]) -> dict[str, RecordingEndpoint]:
    started: dict[str, RecordingEndpoint] = {}
    for name, url in urls.items():
        host, port = _host_port(url)
        _refuse_busy(port, host, f"stop it, use --no-fake-providers, or set {name}")
        started[name] = RecordingEndpoint(host=host, port=port).start()
    return started


def _start_prefect(stack: Stack, data_dir: Path) -> None:
    external = os.environ.get("PREFECT_API_URL")
    if external and api_is_healthy(external):
        console.print(f"[dim]using the Prefect API at {external}[/]")
        stack.use_prefect_api(external, data_dir / "prefect")
        return
    port = prefect_port()
    if listening("127.0.0.1", port) and not api_is_healthy(f"http://127.0.0.1:{port}/api"):
        raise StackError(
            f"port {port} is in use by a program that is not a Prefect server; stop it or set "
            "PREFECT_SERVER_API_PORT to a free port"
        )
    console.print(f"[dim]starting the Prefect server on port {port} (first start ~20 s)...[/]")
    stack.start_prefect_server(port)


def bring_up(settings: Settings, *, fake_providers: bool | None = None) -> RunningStack:
    """``fake_providers``: None starts stand-ins only where nothing answers; True always
    (failing clearly if the port is taken); False never."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    _refuse_busy(settings.webhook_port, settings.webhook_host, "set PARLEY_WEBHOOK_PORT")
    console.print(f"[dim]database: {settings.printable_database_url}[/]")
    migrate.upgrade(settings.resolved_database_url)
    stack = Stack(data_dir)
    running = RunningStack(stack, None)
    try:
        _start_prefect(stack, data_dir)
        if _wants_stand_in(settings.whatsapp_api_url, fake_providers):
            running.fake_whatsapp = _start_fake_whatsapp(settings)
            console.print(f"[dim]fake WhatsApp Cloud API at {running.fake_whatsapp.api_url}[/]")
        running.endpoints = _start_endpoints(_campaign_endpoints(settings, fake_providers))
        for name, endpoint in running.endpoints.items():
            console.print(f"[dim]example endpoint for {name} at {endpoint.url}[/]")
        console.print("[dim]starting the worker and the webhook...[/]")
        stack.start_worker()
        stack.wait_for_deployment(settings.conversation_deployment)
        stack.start_webhook(settings.webhook_host, settings.webhook_port)
    except BaseException:
        running.stop()
        raise
    return running


def run_dev(settings: Settings, *, fake_providers: bool | None = None) -> int:
    # Handlers first: a Ctrl-C while the stack is still coming up stops it cleanly too.
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        running = bring_up(settings, fake_providers=fake_providers)
    except StackError as exc:
        console.print(f"[red]cannot start: {exc}[/]")
        return 2
    console.print(
        f"[green]Parley is up.[/] Prefect UI: {running.ui_url}  webhook: "
        f"{settings.webhook_url}/webhooks/whatsapp  logs: {running.stack.log_dir}\n"
        f"REST API: {settings.webhook_url}/api (Authorization: Bearer <PARLEY_API_KEYS>)\n"
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
