"""A loopback HTTP endpoint that records JSON POSTs: the CRM of the demo and the tests.

It can be told to fail the next requests with a status code, so the ``http`` node's retries
are exercised over a real socket.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RecordingEndpoint:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._failures: list[int] = []
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> RecordingEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, status: int, count: int = 1) -> None:
        with self._lock:
            self._failures.extend([status] * count)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    def _record(self, path: str, headers: dict[str, str], body: Any) -> int:
        with self._lock:
            status = self._failures.pop(0) if self._failures else 201
            self._requests.append(
                {"path": path, "headers": headers, "json": body, "answered": status}
            )
        return status


def _handler_for(endpoint: RecordingEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            """``/_fake/requests``: what was posted, for a developer or another process."""
            if self.path != "/_fake/requests":
                self.send_error(404)
                return
            answer = json.dumps(endpoint.requests).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"null")
            except json.JSONDecodeError:
                body = None
            status = endpoint._record(self.path, dict(self.headers.items()), body)
            answer = json.dumps({"ok": status < 400, "id": len(endpoint.requests)}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
