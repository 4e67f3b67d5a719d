"""The one way a loopback fake is served: started on ``host:port`` (port 0 picks a free one)
from background threads, ready when ``start()`` returns, stopped cleanly by ``stop()`` or the
end of a ``with`` block, or run alone as a process until SIGINT/SIGTERM (``parley dev``, the
benchmarks).

The provider fakes (WhatsApp Cloud API, LinkedIn gateway, SMTP server, the recording endpoint)
subclass :class:`LoopbackServer` — or :class:`LoopbackHTTP` for the HTTP ones — and say only
how they bind, how they stop serving, and which workers of their own they run.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

logger = logging.getLogger(__name__)

FakeT = TypeVar("FakeT")


class LoopbackServer:
    """Start, stop, ``with``, and the background threads a fake runs (each sees ``_stopping``
    set and is joined on ``stop``)."""

    what: ClassVar[str] = "the loopback server"  # in messages: "… is already running"
    thread_name: ClassVar[str] = "loopback"  # prefix of its threads' names

    def __init__(self) -> None:
        self._running = False
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # --- what a fake implements ---------------------------------------------------------------

    @property
    def where(self) -> str:
        """Where it listens, for the log."""
        raise NotImplementedError

    def _open(self) -> None:
        """Bind and begin serving; serving is ready when this returns."""
        raise NotImplementedError

    def _close(self) -> None:
        """Stop serving and release the port."""
        raise NotImplementedError

    def _wake_workers(self) -> None:
        """Unblock the fake's own workers (``_stopping`` is already set); none by default."""

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._running:
            raise RuntimeError(f"{self.what} is already running")
        self._stopping.clear()
        self._open()
        self._running = True
        logger.info("%s listening on %s", self.what, self.where)
        return self

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._close()
        self._stopping.set()
        self._wake_workers()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, name: str, target: Callable[..., object], *args: Any) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"{self.thread_name}-{name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)


class FakeHTTPServer(ThreadingHTTPServer, Generic[FakeT]):
    """A ``ThreadingHTTPServer`` that knows its fake (handlers read ``self.server.fake``)."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: FakeT
    ) -> None:
        super().__init__(address, handler)
        self.fake = fake

    def close_connections(self) -> None:
        """End the connections still open; only a server that keeps them alive has any."""


class JSONHandler(BaseHTTPRequestHandler):
    """Reads a request's body and writes a JSON answer, like the providers' APIs do."""

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def write_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError as exc:
            # The caller gave up (e.g. timed out during a hold); that is the point of a hold.
            logger.info("client went away before the response was written: %r", exc)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class LoopbackHTTP(LoopbackServer):
    """A fake served over HTTP by a ``FakeHTTPServer`` in a background thread."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._address = (host, port)
        self._server: FakeHTTPServer[Any] | None = None

    def _make_server(self) -> FakeHTTPServer[Any]:
        """Bind the fake's server to ``self._address``."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """Root of the server, where the ``/_fake/...`` control endpoints live."""
        if self._server is None:
            raise RuntimeError(f"{self.what} is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def where(self) -> str:
        return self.base_url

    def _open(self) -> None:
        self._server = self._make_server()
        self._spawn("http", self._server.serve_forever, 0.05)

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()


def serve_until_signalled(server: LoopbackServer, *, announce: bool = False) -> None:
    """Run ``server`` as a process of its own until SIGINT or SIGTERM; ``announce`` prints
    where it listens on stdout, for whoever started the process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    with server:
        if announce:
            print(f"{server.what} listening on {server.where}", flush=True)
        while not stopping.wait(0.5):
            pass
    logger.info("%s stopped", server.what)
