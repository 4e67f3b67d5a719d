"""A loopback HTTP endpoint that records JSON POSTs: the CRM of the demo and the tests.

It can be told to fail the next requests with a status code, so the ``http`` node's retries
are exercised over a real socket.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from devkit.fakes.loopback import FakeHTTPServer, JSONHandler, LoopbackHTTP


class RecordingEndpoint(LoopbackHTTP):
    what = "the recording endpoint"
    thread_name = "recording-endpoint"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._failures: list[int] = []

    def _make_server(self) -> FakeHTTPServer[RecordingEndpoint]:
        return FakeHTTPServer(self._address, _handler_for(self), self)

    @property
    def url(self) -> str:
        return self.base_url

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


def _handler_for(endpoint: RecordingEndpoint) -> type[JSONHandler]:
    class Handler(JSONHandler):
        def do_GET(self) -> None:
            """``/_fake/requests``: what was posted, for a developer or another process."""
            if self.path != "/_fake/requests":
                self.send_error(404)
                return
            self.write_json(200, endpoint.requests)

        def do_POST(self) -> None:
            raw = self.read_body()
            try:
                body = json.loads(raw or b"null")
            except json.JSONDecodeError:
                body = None
            status = endpoint._record(self.path, dict(self.headers.items()), body)
            self.write_json(status, {"ok": status < 400, "id": len(endpoint.requests)})

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
