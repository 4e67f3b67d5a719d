"""Bringing the local stack up for ``parley dev``, ``parley demo`` and ``parley outreach-demo``.

Real processes (Prefect server, worker, webhook) plus loopback stand-ins for what a developer's
machine lacks: the WhatsApp Cloud API, the endpoints the default campaign calls (its ``env:``
URLs, e.g. the example CRM), and for outreach a LinkedIn gateway and an SMTP server. A stand-in
starts only where nothing answers already — a developer's own mock or a tunnel keeps its port —
unless ``--fake-providers`` / ``--no-fake-providers`` says otherwise. Every port Parley needs is
checked first, and a busy one is named together with the setting that moves it.

Outreach: the fake LinkedIn gateway serves ``PARLEY_LINKEDIN_GATEWAY_URL`` (a free port when
unset) and signs its webhooks to the webhook's ``/webhooks/linkedin`` with
``PARLEY_LINKEDIN_WEBHOOK_SECRET`` (a demo secret when unset); the loopback SMTP server listens
on ``PARLEY_DEV_SMTP_PORT`` (a free port when unset). The worker and the webhook get the
gateway's URL, key and secret in their environment; where the fakes are is written to
``<data_dir>/dev-outreach.json`` for ``parley outreach-demo``. The outreach example campaign is
installed alongside the default one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console

from devkit.fakes import linkedin_gateway
from devkit.fakes.linkedin_gateway import FakeLinkedInGateway
from devkit.fakes.recording_endpoint import RecordingEndpoint
from devkit.fakes.smtp_server import LoopbackSMTPServer
from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.stack.processes import Stack, StackError, api_is_healthy, free_port
from parley.campaign import load_campaign
from parley.campaign.registry import install_campaign
from parley.db import Database, migrate, queries
from parley.errors import AlreadyExists, ParleyError
from parley.outreach import identities
from parley.settings import Settings, is_loopback

DEFAULT_PREFECT_PORT = 4200
DEMO_LINKEDIN_WEBHOOK_SECRET = "parley-demo-linkedin-webhook-secret"
SMTP_PORT_VARIABLE = "PARLEY_DEV_SMTP_PORT"
OUTREACH_FILE = "dev-outreach.json"
OUTREACH_CAMPAIGN = Path(__file__).resolve().parents[2] / "examples" / "campaigns" / "outreach.yaml"
console = Console()


@dataclass(frozen=True)
class OutreachFakes:
    """Where the dev stack's outreach providers are, as ``parley outreach-demo`` reads them."""

    gateway_url: str | None
    gateway_api_key: str | None
    gateway_account_id: str | None
    gateway_webhook_url: str | None
    smtp_host: str | None
    smtp_port: int | None

    def write(self, data_dir: Path) -> Path:
        path = data_dir / OUTREACH_FILE
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    @classmethod
    def read(cls, data_dir: Path) -> OutreachFakes | None:
        try:
            values: dict[str, Any] = json.loads((data_dir / OUTREACH_FILE).read_text("utf-8"))
            return cls(**values)
        except (OSError, ValueError, TypeError):
            return None


@dataclass
class RunningStack:
    stack: Stack
    fake_whatsapp: FakeWhatsAppAPI | None
    endpoints: dict[str, RecordingEndpoint] = field(default_factory=dict)
    fake_linkedin: FakeLinkedInGateway | None = None
    smtp: LoopbackSMTPServer | None = None
    outreach: OutreachFakes | None = None

    @property
    def ui_url(self) -> str:
        assert self.stack.api_url
        return self.stack.api_url.removesuffix("/api")

    def stop(self) -> None:
        """The fakes go first: stopped after the webhook, they would spend their retries on
        status callbacks nobody can receive and warn that they gave up (a provider's callbacks
        outliving our service is what a restart is for, not what a clean stop should report)."""
        if self.fake_whatsapp is not None:
            self.fake_whatsapp.stop()
        for endpoint in self.endpoints.values():
            endpoint.stop()
        if self.fake_linkedin is not None:
            self.fake_linkedin.stop()
        if self.smtp is not None:
            self.smtp.stop()
        self.stack.stop()
        if self.outreach is not None:
            with contextlib.suppress(OSError):
                (self.stack.data_dir / OUTREACH_FILE).unlink()


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
    """The default campaign's ``env:`` URLs that a loopback stand-in should serve (a campaign
    named by a published name brings its own endpoints)."""
    if settings.default_campaign_file is None:
        return {}
    campaign = load_campaign(settings.default_campaign_file)
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


def _start_fake_linkedin(
    settings: Settings, running: RunningStack, fake_providers: bool | None
) -> tuple[str | None, str | None, str | None]:
    """The gateway URL, key and webhook URL the stack uses; a fake serves it when nothing
    answers there (or at a free port when ``PARLEY_LINKEDIN_GATEWAY_URL`` is unset)."""
    configured = settings.linkedin_gateway_url
    url = configured or f"http://127.0.0.1:{free_port()}"
    api_key = settings.linkedin_api_key.get_secret_value() or None
    secret = settings.linkedin_webhook_secret.get_secret_value() or DEMO_LINKEDIN_WEBHOOK_SECRET
    webhook_url = f"{settings.webhook_url}/webhooks/linkedin"
    running.stack.env["PARLEY_LINKEDIN_WEBHOOK_SECRET"] = secret
    if fake_providers is False or (configured and not _wants_stand_in(url, fake_providers)):
        if configured:
            console.print(f"[dim]using the LinkedIn gateway at {configured}[/]")
        return configured, api_key, None
    host, port = _host_port(url)
    _refuse_busy(port, host, "stop it, use --no-fake-providers, or set PARLEY_LINKEDIN_GATEWAY_URL")
    api_key = api_key or linkedin_gateway.DEFAULT_API_KEY
    fake = FakeLinkedInGateway(
        host=host,
        port=port,
        api_key=api_key,
        webhook_url=webhook_url,
        webhook_secret=secret,
    )
    fake.start()
    running.fake_linkedin = fake
    running.stack.env["PARLEY_LINKEDIN_GATEWAY_URL"] = fake.gateway_url
    running.stack.env["PARLEY_LINKEDIN_API_KEY"] = api_key
    console.print(
        f"[dim]fake LinkedIn gateway at {fake.gateway_url} (seat "
        f"{linkedin_gateway.DEFAULT_ACCOUNT_ID}; webhooks to {webhook_url})[/]"
    )
    return fake.gateway_url, api_key, webhook_url


def _start_smtp(running: RunningStack, fake_providers: bool | None) -> tuple[str, int] | None:
    """A loopback SMTP server on ``PARLEY_DEV_SMTP_PORT`` (or a free port) unless one answers
    there already."""
    configured = os.environ.get(SMTP_PORT_VARIABLE)
    port = int(configured) if configured else free_port()
    if fake_providers is False:
        return ("127.0.0.1", port) if configured else None
    if configured and fake_providers is None and listening("127.0.0.1", port):
        console.print(f"[dim]using the SMTP server at 127.0.0.1:{port}[/]")
        return "127.0.0.1", port
    _refuse_busy(
        port, "127.0.0.1", f"stop it, use --no-fake-providers, or set {SMTP_PORT_VARIABLE}"
    )
    server = LoopbackSMTPServer(port=port)
    server.start()
    running.smtp = server
    console.print(f"[dim]loopback SMTP server at {server.host}:{server.port}[/]")
    return server.host, server.port


def _start_outreach_fakes(
    settings: Settings, running: RunningStack, fake_providers: bool | None
) -> OutreachFakes:
    gateway_url, api_key, webhook_url = _start_fake_linkedin(settings, running, fake_providers)
    smtp = _start_smtp(running, fake_providers)
    fakes = OutreachFakes(
        gateway_url=gateway_url,
        gateway_api_key=api_key,
        gateway_account_id=linkedin_gateway.DEFAULT_ACCOUNT_ID if running.fake_linkedin else None,
        gateway_webhook_url=webhook_url,
        smtp_host=smtp[0] if smtp else None,
        smtp_port=smtp[1] if smtp else None,
    )
    fakes.write(Path(settings.data_dir))
    running.outreach = fakes
    return fakes


def _install_outreach_campaign(database_url: str) -> str | None:
    if not OUTREACH_CAMPAIGN.exists():
        return None

    async def install() -> str:
        db = Database(database_url)
        try:
            async with db.transaction() as session:
                version = await install_campaign(session, OUTREACH_CAMPAIGN)
                return f"{version.name} v{version.version}"
        finally:
            await db.dispose()

    return asyncio.run(install())


WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEV_SEAT_POLICY: dict[str, Any] = {
    "working_hours": {"weekly": {day: ["00:00-24:00"] for day in WEEK}},
    "limits": {
        "actions": {
            "linkedin_profile_visit": {"spacing": "1s"},
            "linkedin_connection": {"daily": 25, "spacing": "3s"},
            "linkedin_message": {"spacing": "3s"},
            "email": {"spacing": "3s"},
        }
    },
}
"""Open around the clock, so a trial under ``parley dev`` moves whatever the hour; small caps,
so the dispatcher's waits show within minutes (``parley identity show``). Change it with
``parley identity update``: a restart keeps the operator's policy and only re-points the
seat at this run's fakes."""


def _dev_seat(database_url: str, fakes: OutreachFakes) -> int | None:
    """A LinkedIn seat on the fake gateway (its mailbox on the loopback SMTP server) as a sender
    identity, so a newcomer can publish a LinkedIn campaign and import leads for it at once:
    the fakes listen on new ports each start, so the settings are written again every time."""
    account = fakes.gateway_account_id
    if account is None or fakes.gateway_url is None:
        return None
    seat_settings: dict[str, Any] = {
        "account_id": account,
        "gateway_url": fakes.gateway_url,
        "api_key": fakes.gateway_api_key,
    }
    if fakes.smtp_host is not None:
        seat_settings["email"] = {
            "address": f"{account}@parley.example",
            "smtp_host": fakes.smtp_host,
            "smtp_port": fakes.smtp_port,
            "starttls": False,
        }

    async def ensure() -> int:
        db = Database(database_url)
        try:
            try:
                added = await identities.add_identity(
                    db,
                    "linkedin",
                    account,
                    name="parley dev seat",
                    policy=DEV_SEAT_POLICY,
                    settings=seat_settings,
                )
                return int(added["id"])
            except AlreadyExists:
                pass
            async with db.read() as session:
                found = await queries.identities.find_identity(session, "linkedin", account)
            assert found is not None
            await identities.update_identity(db, found.id, settings=seat_settings)
            return found.id
        finally:
            await db.dispose()

    return asyncio.run(ensure())


def _linkedin_route_missing(settings: Settings, running: RunningStack) -> None:
    """Until the webhook serves ``/webhooks/linkedin``, the fake keeps its events to itself
    rather than retrying into a 404."""
    if running.fake_linkedin is None:
        return
    try:
        paths = httpx.get(f"{settings.webhook_url}/openapi.json", timeout=5).json()["paths"]
    except (httpx.HTTPError, ValueError, KeyError):
        return
    if "/webhooks/linkedin" not in paths:
        running.fake_linkedin.webhook_url = None
        console.print("[dim]the webhook has no /webhooks/linkedin route: gateway events off[/]")


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


def _refuse_missing_campaign(path: Path) -> None:
    """Before anything starts: the default campaign is a path, relative to where the command
    runs, and a stack without it would only fail at its first message."""
    try:
        load_campaign(path)
    except ParleyError as exc:
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise StackError(
            f"{exc}{where}: set PARLEY_DEFAULT_CAMPAIGN to the campaign file, or run from "
            "Parley's checkout"
        ) from None


def bring_up(settings: Settings, *, fake_providers: bool | None = None) -> RunningStack:
    """``fake_providers``: None starts stand-ins only where nothing answers; True always
    (failing clearly if the port is taken); False never."""
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    _refuse_busy(settings.webhook_port, settings.webhook_host, "set PARLEY_WEBHOOK_PORT")
    if settings.default_campaign_file is not None:  # a published name: the webhook checks it
        _refuse_missing_campaign(settings.default_campaign_file)
    console.print(f"[dim]database: {settings.printable_database_url}[/]")
    migrate.upgrade(settings.resolved_database_url)
    installed = _install_outreach_campaign(settings.resolved_database_url)
    if installed:
        console.print(f"[dim]campaign {installed} installed[/]")
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
        fakes = _start_outreach_fakes(settings, running, fake_providers)
        seat = _dev_seat(settings.resolved_database_url, fakes)
        if seat is not None:
            console.print(f"LinkedIn seat {fakes.gateway_account_id}: [bold]identity {seat}[/]")
        console.print("[dim]starting the worker and the webhook...[/]")
        stack.start_worker()
        stack.wait_for_deployment(settings.conversation_deployment)
        stack.start_webhook(settings.webhook_host, settings.webhook_port)
        _linkedin_route_missing(settings, running)
    except BaseException:
        running.stop()
        raise
    return running


def _outreach_line(fakes: OutreachFakes | None) -> str:
    if fakes is None:
        return ""
    parts = []
    if fakes.gateway_url:
        parts.append(f"LinkedIn gateway {fakes.gateway_url}")
    if fakes.smtp_host:
        parts.append(f"SMTP {fakes.smtp_host}:{fakes.smtp_port}")
    if not parts:
        return ""
    return f"outreach: {', '.join(parts)} (try `parley outreach-demo`)\n"


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
        f"{_outreach_line(running.outreach)}"
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
