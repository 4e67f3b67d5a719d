"""A loopback SMTP server (aiosmtpd) that records what it accepts and fails on demand.

The demo and the tests send through the real client, real sockets and a real SMTP dialogue
without a mail provider. Failure injection makes refused logins, throttling, unknown recipients
and the "accepted, but the connection dropped before the 250" case reproducible.

Run standalone for ``parley dev``: ``python -m devkit.fakes.smtp_server --port 2525``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import socket
import threading
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any, Final, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from devkit.fakes.loopback import LoopbackServer, serve_until_signalled

logger = logging.getLogger(__name__)

Stage = Literal["MAIL", "RCPT", "DATA"]
DEFAULT_HOSTNAME: Final = "parley-loopback-smtp"
DEFAULT_STANDALONE_PORT: Final = 2525


@dataclass(frozen=True, slots=True)
class ReceivedEmail:
    """One accepted message: the SMTP envelope, the parsed message, and who logged in."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    login: str | None
    queue_id: str

    @property
    def text(self) -> str:
        """The plain-text body, as the recipient would read it."""
        body = self.message.get_body(preferencelist=("plain",))
        if not isinstance(body, EmailMessage):
            return ""
        return str(body.get_content()).replace("\r\n", "\n")


@dataclass(frozen=True, slots=True)
class _Failure:
    code: int
    message: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.message}"


class LoopbackSMTPServer(LoopbackServer):
    """Accepts mail on ``host:port`` (port 0 picks a free one) in a background thread."""

    what = "the loopback SMTP server"

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, hostname: str = DEFAULT_HOSTNAME
    ) -> None:
        super().__init__()
        self._host = host
        self._port = port
        self._hostname = hostname
        self._lock = threading.Lock()
        self._received_changed = threading.Condition(self._lock)
        self._received: list[ReceivedEmail] = []
        self._failures: dict[Stage, deque[_Failure]] = {
            "MAIL": deque(),
            "RCPT": deque(),
            "DATA": deque(),
        }
        self._drops = 0
        self._delays: dict[Stage, deque[float]] = {
            "MAIL": deque(),
            "RCPT": deque(),
            "DATA": deque(),
        }
        self._credentials: tuple[str, str] | None = None
        self._logins_refused: str | None = None
        self._connections = 0
        self._queue_ids = itertools.count(1)
        self._controller: _Controller | None = None

    # --- lifecycle (start, stop, ``with``: LoopbackServer) ----------------------------------

    def _open(self) -> None:
        controller = _Controller(self, self._host, self._port, self._hostname)
        controller.start()  # its own thread, with an asyncio loop; returns once it answers
        self._port = controller.port
        with self._lock:
            self._connections = 0  # not the probe aiosmtpd makes to see the server is up
        self._controller = controller

    def _close(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    @property
    def where(self) -> str:
        return f"{self._host}:{self._port}"

    # --- what clients and tests use -----------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        return self._port

    @property
    def connections(self) -> int:
        """SMTP sessions opened since start: proves a refused send never reached the server."""
        with self._lock:
            return self._connections

    @property
    def messages(self) -> list[ReceivedEmail]:
        with self._lock:
            return list(self._received)

    def messages_to(self, address: str) -> list[ReceivedEmail]:
        wanted = address.lower()
        return [m for m in self.messages if wanted in (r.lower() for r in m.rcpt_tos)]

    def wait_for_messages(self, n: int, timeout: float) -> bool:
        with self._received_changed:
            return self._received_changed.wait_for(lambda: len(self._received) >= n, timeout)

    def smtp_settings(self, **overrides: Any) -> dict[str, Any]:
        """``SenderIdentity.settings`` for a mailbox on this server (plain, no TLS)."""
        settings: dict[str, Any] = {
            "smtp_host": self.host,
            "smtp_port": self.port,
            "starttls": False,
            "timeout": 5.0,
        }
        if self._credentials is not None:
            settings["username"], settings["password"] = self._credentials
        return settings | overrides

    # --- failure injection --------------------------------------------------------------------

    def fail_next(self, code: int, message: str, count: int = 1, *, at: Stage = "RCPT") -> None:
        """Refuse the next ``count`` MAIL, RCPT or DATA commands with ``code message``. A 421
        also closes the connection, as a real server does."""
        with self._lock:
            self._failures[at].extend([_Failure(code, message)] * count)

    def require_auth(self, username: str, password: str) -> None:
        """From now on, MAIL needs a login (PLAIN or LOGIN); a wrong one gets 535."""
        with self._lock:
            self._credentials = (username, password)

    def refuse_logins(
        self, reply: str = "535 5.7.8 Account locked: log in via your web browser"
    ) -> None:
        """Every login is refused with ``reply``, the right password too (the provider locked
        the account or revoked its app password), until ``accept_logins``."""
        with self._lock:
            self._logins_refused = reply

    def accept_logins(self) -> None:
        with self._lock:
            self._logins_refused = None

    def drop_connection_next(self) -> None:
        """Accept and record the next message, then drop the connection before answering its
        DATA: the sender cannot know that the message went through."""
        with self._lock:
            self._drops += 1

    def delay_next(self, seconds: float, *, at: Stage = "DATA") -> None:
        """A slow server: the next MAIL, RCPT or DATA command is answered ``seconds`` late. A
        DATA is accepted and recorded first, so the sender waits for a 250 while the message
        is already in: killed meanwhile, it cannot know that the message went through."""
        with self._lock:
            self._delays[at].append(seconds)

    def reset(self) -> None:
        with self._lock:
            self._received.clear()
            for failures in self._failures.values():
                failures.clear()
            for delays in self._delays.values():
                delays.clear()
            self._drops = 0
            self._credentials = None
            self._logins_refused = None

    # --- called from the server thread --------------------------------------------------------

    def _count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    def _take_failure(self, stage: Stage) -> _Failure | None:
        with self._lock:
            failures = self._failures[stage]
            return failures.popleft() if failures else None

    async def _delay(self, stage: Stage) -> None:
        with self._lock:
            delays = self._delays[stage]
            seconds = delays.popleft() if delays else 0.0
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _take_drop(self) -> bool:
        with self._lock:
            dropping = self._drops > 0
            self._drops -= int(dropping)
            return dropping

    def _login_required(self) -> bool:
        with self._lock:
            return self._credentials is not None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        with self._lock:
            expected, refused = self._credentials, self._logins_refused
        if refused is not None:
            return AuthResult(success=False, handled=False, message=refused)
        given = (
            auth_data.login.decode(errors="replace"),
            auth_data.password.decode(errors="replace"),
        )
        if expected is not None and given != expected:
            return AuthResult(success=False, handled=False)  # aiosmtpd answers 535
        return AuthResult(success=True, auth_data=auth_data)

    def _record(self, envelope: Envelope, session: Session) -> ReceivedEmail:
        content = envelope.original_content or b""
        message = BytesParser(_class=EmailMessage, policy=default_policy).parsebytes(content)
        auth = session.auth_data
        login = auth.login.decode(errors="replace") if isinstance(auth, LoginPassword) else None
        record = ReceivedEmail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            message=message,
            login=login,
            queue_id=f"LOOP{next(self._queue_ids):06d}",
        )
        with self._received_changed:
            self._received.append(record)
            self._received_changed.notify_all()
        logger.info(
            "accepted %s from %s to %s: %r",
            record.queue_id,
            record.mail_from,
            ", ".join(record.rcpt_tos),
            message["Subject"],
        )
        return record


class _Handler:
    """aiosmtpd hooks: each command first checks for an injected failure."""

    def __init__(self, owner: LoopbackSMTPServer) -> None:
        self._owner = owner

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self._owner._login_required() and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if (failure := self._owner._take_failure("MAIL")) is not None:
            return _refuse(server, failure)
        await self._owner._delay("MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if (failure := self._owner._take_failure("RCPT")) is not None:
            return _refuse(server, failure)
        await self._owner._delay("RCPT")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if (failure := self._owner._take_failure("DATA")) is not None:
            return _refuse(server, failure)
        record = self._owner._record(envelope, session)
        if self._owner._take_drop() and isinstance(server.transport, asyncio.WriteTransport):
            server.transport.abort()  # the 250 below is never written
        await self._owner._delay("DATA")
        return f"250 2.0.0 OK: queued as {record.queue_id}"


def _refuse(server: SMTP, failure: _Failure) -> str:
    if failure.code == 421 and server.transport is not None:
        # Closing flushes the 421 first: it is written before the loop runs this callback.
        asyncio.get_running_loop().call_soon(server.transport.close)
    return failure.reply


class _Controller(Controller):
    """Binds port 0 to a free port, counts sessions, and sets up AUTH without TLS (loopback)."""

    def __init__(self, owner: LoopbackSMTPServer, host: str, port: int, hostname: str) -> None:
        super().__init__(
            _Handler(owner),
            hostname=host,
            port=port,
            server_hostname=hostname,
            authenticator=owner._authenticate,
            auth_require_tls=False,
        )
        self._owner = owner

    def factory(self) -> SMTP:
        self._owner._count_connection()
        return SMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        """aiosmtpd's probe that makes it build the first SMTP instance, on the port the OS
        chose when asked for port 0 (aiosmtpd's own probe would dial port 0)."""
        if isinstance(self.server, asyncio.Server) and self.server.sockets:
            self.port = int(self.server.sockets[0].getsockname()[1])
        with socket.create_connection((self.hostname, self.port), timeout=1.0) as probe:
            probe.recv(1024)


# --- standalone -------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Loopback SMTP server that records mail.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_STANDALONE_PORT)
    parser.add_argument("--username", default=None, help="require this login (with --password)")
    parser.add_argument("--password", default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command
    server = LoopbackSMTPServer(host=args.host, port=args.port)
    if args.username is not None:
        server.require_auth(args.username, args.password or "")
    serve_until_signalled(server, announce=True)


if __name__ == "__main__":
    main()
