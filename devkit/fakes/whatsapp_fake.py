"""A loopback fake of the WhatsApp Cloud API's ``/messages`` endpoint and its phone number
object (``GET /{version}/{phone-number-id}``), served over real HTTP.

The demo and the tests exercise the real client, real sockets and signed status callbacks
without a Meta account; failure injection makes rate limits, expired tokens and "provider
accepted but the caller never heard back" reproducible on demand. Numbers designated with
``not_on_whatsapp`` (or ``POST /_fake/not_on_whatsapp {"phones": [...]}``) are answered as Meta
answers a number with no WhatsApp account: HTTP 400, error code 131026.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import queue
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard, cast
from urllib.parse import urlsplit

import httpx

from devkit.fakes.loopback import FakeHTTPServer, JSONHandler, LoopbackHTTP, serve_until_signalled
from devkit.fakes.whatsapp_payloads import build_status_payload, new_wamid
from parley.channels.base import JSONDict
from parley.channels.whatsapp.wire import SIGNATURE_HEADER, sign

logger = logging.getLogger(__name__)


DEFAULT_ACCESS_TOKEN: Final = "parley-demo-access-token"
DEFAULT_PHONE_NUMBER_ID: Final = "100000000000001"
DEFAULT_STANDALONE_PORT: Final = 8089
CALLBACK_STATUSES: Final = ("sent", "delivered")
CALLBACK_ATTEMPTS: Final = 4
CALLBACK_FIRST_BACKOFF: Final = 0.1

# Meta's titles for the codes the demo and the tests inject.
ERROR_TITLES: Final[dict[int, str]] = {
    4: "(#4) Application request limit reached",
    100: "(#100) Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    80007: "(#80007) Rate limit issues",
    130429: "(#130429) Rate limit hit",
    131000: "(#131000) Something went wrong",
    131047: "(#131047) Re-engagement message",
    131056: "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    131026: "(#131026) Message Undeliverable.",
}
NOT_A_WHATSAPP_USER: Final = 131026

_MESSAGES_PATH: Final = re.compile(r"^/(?P<version>[^/]+)/(?P<phone_number_id>[^/]+)/messages$")
_PHONE_NUMBER_PATH: Final = re.compile(r"^/(?P<version>v[^/]+)/(?P<phone_number_id>\d+)$")
EXPIRED_TOKEN_SUBCODE: Final = 463  # Meta's "Session has expired"


@dataclass(frozen=True, slots=True)
class _Failure:
    code: int
    http_status: int
    message: str
    retry_after: float | None = None


@dataclass(slots=True)
class _Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    hold_seconds: float = 0.0
    callbacks_done: threading.Event | None = None


@dataclass(frozen=True, slots=True)
class _CallbackJob:
    record: JSONDict
    done: threading.Event


class FakeWhatsAppAPI(LoopbackHTTP):
    """Accepts sends like Meta would, records them, and reports their status to a webhook."""

    what = "the fake WhatsApp API"
    thread_name = "fake-whatsapp"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
        webhook_url: str | None = None,
        app_secret: str | None = None,
        version: str = "v21.0",
    ) -> None:
        super().__init__(host, port)
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        # Every business number of the account, with the token that may send from it.
        self._numbers: dict[str, str] = {phone_number_id: access_token}
        self.webhook_url = webhook_url
        self.app_secret = app_secret
        self.version = version
        self._lock = threading.Lock()
        self._received_changed = threading.Condition(self._lock)
        self._received: list[JSONDict] = []
        self._failures: deque[_Failure] = deque()
        self._hold_seconds = 0.0
        self._token_expired = False
        self._not_on_whatsapp: set[str] = set()  # numbers that are no WhatsApp account
        self._callbacks: queue.Queue[_CallbackJob | None] = queue.Queue()
        self._callbacks_flowing = threading.Event()
        self._callbacks_flowing.set()

    # --- lifecycle (start, stop, ``with``: LoopbackHTTP) ------------------------------------

    def _make_server(self) -> _Server:
        return _Server(self._address, _Handler, self)

    def _open(self) -> None:
        self._callbacks = queue.Queue()
        super()._open()
        if self._delivers_callbacks:
            self._spawn("callbacks", self._deliver_callbacks, self._callbacks)

    def _wake_workers(self) -> None:
        self._callbacks_flowing.set()
        self._callbacks.put(None)

    # --- what clients and tests use -----------------------------------------------------------

    @property
    def where(self) -> str:
        return self.api_url

    @property
    def api_url(self) -> str:
        """What a ``WhatsAppClient`` takes as ``api_url``."""
        return f"{self.base_url}/{self.version}"

    def add_number(self, phone_number_id: str, access_token: str | None = None) -> None:
        """Another business number of the account (Meta: one WABA, several phone numbers),
        sending with ``access_token`` (default: the fake's own token). Each recorded send says
        which number it went out from in ``_phone_number_id``."""
        with self._lock:
            self._numbers[phone_number_id] = access_token or self.access_token

    @property
    def received(self) -> list[JSONDict]:
        with self._lock:
            return copy.deepcopy(self._received)

    def sent_from(self, phone_number_id: str) -> list[JSONDict]:
        """The sends that went out from one business number."""
        return [r for r in self.received if r["_phone_number_id"] == phone_number_id]

    def texts_to(self, phone: str) -> list[str]:
        return [
            text
            for record in self.received
            if record.get("to") == phone and (text := _visible_text(record)) is not None
        ]

    def wait_for_messages(self, n: int, timeout: float) -> bool:
        with self._received_changed:
            return self._received_changed.wait_for(lambda: len(self._received) >= n, timeout)

    def fail_next(
        self,
        code: int,
        http_status: int,
        *,
        count: int = 1,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``count`` sends with a Meta-format error instead of accepting them."""
        failure = _Failure(
            code, http_status, message or ERROR_TITLES.get(code, "Error"), retry_after
        )
        with self._lock:
            self._failures.extend([failure] * count)

    def hold_next(self, seconds: float) -> None:
        """Delay the next answer, after recording the send and reporting its status."""
        with self._lock:
            self._hold_seconds = seconds

    def expire_token(self) -> None:
        """The access token expires: every call is refused as Meta does (401, OAuthException
        190, subcode 463) until ``renew_token``."""
        with self._lock:
            self._token_expired = True

    def renew_token(self) -> None:
        with self._lock:
            self._token_expired = False

    def pause_callbacks(self) -> None:
        """Hold status callbacks back (queued, in order) until ``resume_callbacks``: Meta's
        webhook deliveries can come late, e.g. after the sender has died."""
        self._callbacks_flowing.clear()

    def resume_callbacks(self) -> None:
        self._callbacks_flowing.set()

    def not_on_whatsapp(self, *phones: str) -> None:
        """These numbers have no WhatsApp account: a send to one is answered 131026 (Message
        Undeliverable), as Meta answers it (HTTP 400, the Graph error body)."""
        with self._lock:
            self._not_on_whatsapp.update(phone.lstrip("+") for phone in phones)

    def reset(self) -> None:
        self._callbacks_flowing.set()
        with self._lock:
            self._not_on_whatsapp.clear()
            self._received.clear()
            self._failures.clear()
            self._hold_seconds = 0.0
            self._token_expired = False

    def _expired_token(self) -> _Reply | None:
        """Meta's answer to any call while the token is expired, else None."""
        with self._lock:
            expired = self._token_expired
        if expired:
            message = (
                "Error validating access token: Session has expired on Friday, 04-Dec-26 "
                "10:00:00 PST. The current time is Monday, 07-Dec-26 10:00:00 PST."
            )
            return _Reply(401, meta_error(190, message, subcode=EXPIRED_TOKEN_SUBCODE))
        return None

    def _handle_phone_number(self, phone_number_id: str, authorization: str | None) -> _Reply:
        """``GET /{version}/{phone-number-id}``: the phone number object, with Meta's default
        fields."""
        with self._lock:
            numbers = dict(self._numbers)
        if authorization not in {f"Bearer {token}" for token in numbers.values()}:
            return _Reply(401, meta_error(190, ERROR_TITLES[190]))
        if authorization != f"Bearer {numbers.get(phone_number_id)}":
            details = f"Object with ID '{phone_number_id}' does not exist"
            return _Reply(400, meta_error(100, ERROR_TITLES[100], details=details, subcode=33))
        number = {
            "verified_name": "Parley Demo",
            "code_verification_status": "VERIFIED",
            "display_phone_number": f"+{phone_number_id[-11:]}",
            "quality_rating": "GREEN",
            "platform_type": "CLOUD_API",
            "throughput": {"level": "STANDARD"},
            "id": phone_number_id,
        }
        return _Reply(200, number)

    # --- serving sends ------------------------------------------------------------------------

    def _handle_send(self, phone_number_id: str, authorization: str | None, raw: bytes) -> _Reply:
        with self._lock:
            numbers = dict(self._numbers)
        if authorization not in {f"Bearer {token}" for token in numbers.values()}:
            return _Reply(401, meta_error(190, ERROR_TITLES[190]))
        if authorization != f"Bearer {numbers.get(phone_number_id)}":
            # Meta: a number this token's system user cannot see does not exist for it.
            details = f"Object with ID '{phone_number_id}' does not exist"
            return _Reply(400, meta_error(100, ERROR_TITLES[100], details=details, subcode=33))
        hold, failure = self._take_hold_and_failure()
        reply = (
            self._reply_to_send(raw, phone_number_id)
            if failure is None
            else _failure_reply(failure)
        )
        reply.hold_seconds = hold
        return reply

    def _take_hold_and_failure(self) -> tuple[float, _Failure | None]:
        with self._lock:
            hold, self._hold_seconds = self._hold_seconds, 0.0
            failure = self._failures.popleft() if self._failures else None
        return hold, failure

    def _reply_to_send(self, raw: bytes, phone_number_id: str) -> _Reply:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        problem = send_problem(body)
        if problem is not None:
            return _Reply(400, meta_error(100, ERROR_TITLES[100], details=problem))
        with self._lock:
            unknown = str(body["to"]).lstrip("+") in self._not_on_whatsapp
        if unknown:
            details = (
                "Unable to deliver message. Reasons can include: the recipient phone number is "
                "not a WhatsApp phone number; ..."
            )
            title = ERROR_TITLES[NOT_A_WHATSAPP_USER]
            return _Reply(400, meta_error(NOT_A_WHATSAPP_USER, title, details=details))
        record = self._record(body, phone_number_id)
        success = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": record["_wamid"]}],
        }
        return _Reply(200, success, callbacks_done=self._queue_callbacks(record))

    def _record(self, body: JSONDict, phone_number_id: str) -> JSONDict:
        record = {
            **body,
            "_wamid": new_wamid(str(body["to"])),
            "_phone_number_id": phone_number_id,
        }
        with self._received_changed:
            self._received.append(record)
            self._received_changed.notify_all()
        return copy.deepcopy(record)

    # --- status callbacks ---------------------------------------------------------------------

    @property
    def _delivers_callbacks(self) -> bool:
        return bool(self.webhook_url and self.app_secret)

    def _queue_callbacks(self, record: JSONDict) -> threading.Event:
        done = threading.Event()
        if self._delivers_callbacks:
            self._callbacks.put(_CallbackJob(record, done))
        else:
            done.set()
        return done

    def _deliver_callbacks(self, jobs: queue.Queue[_CallbackJob | None]) -> None:
        """One worker, so each message's "sent" reaches the webhook before its "delivered"."""
        with httpx.Client(timeout=5.0) as http:
            while (job := jobs.get()) is not None and not self._stopping.is_set():
                while not self._callbacks_flowing.wait(0.1):
                    if self._stopping.is_set():
                        return
                try:
                    for status in CALLBACK_STATUSES:
                        self._deliver_status(http, job.record, status)
                except Exception:
                    # A dead worker would silently stop every later callback.
                    logger.exception("status callbacks for %s failed", job.record["_wamid"])
                finally:
                    job.done.set()

    def _deliver_status(self, http: httpx.Client, record: JSONDict, status: str) -> None:
        payload = build_status_payload(
            phone_number_id=str(record["_phone_number_id"]),
            message_id=record["_wamid"],
            status=status,
            recipient=str(record["to"]),
            client_ref=record.get("biz_opaque_callback_data"),
        )
        raw = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(raw, cast(str, self.app_secret)),
        }
        for attempt in range(CALLBACK_ATTEMPTS):
            if self._post_callback(http, raw, headers):
                return
            if self._stopping.wait(CALLBACK_FIRST_BACKOFF * 2**attempt):
                logger.info("stopping: dropped %r status of %s", status, record["_wamid"])
                return
        logger.warning(
            "gave up delivering %r status of %s to %s after %d attempts",
            status,
            record["_wamid"],
            self.webhook_url,
            CALLBACK_ATTEMPTS,
        )

    def _post_callback(self, http: httpx.Client, raw: bytes, headers: dict[str, str]) -> bool:
        try:
            response = http.post(cast(str, self.webhook_url), content=raw, headers=headers)
        except httpx.HTTPError as exc:
            logger.info("status callback to %s failed: %r", self.webhook_url, exc)
            return False
        if response.is_success:
            return True
        logger.info("status callback to %s got HTTP %d", self.webhook_url, response.status_code)
        return False


# --- Meta's wire format -----------------------------------------------------------------------


def meta_error(
    code: int,
    message: str,
    *,
    details: str | None = None,
    subcode: int | None = None,
) -> JSONDict:
    """An error body shaped like the Graph API's."""
    error: JSONDict = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(16)
    return {"error": error}


def send_problem(body: Any) -> str | None:
    """Why Meta would refuse this send body with code 100, or None when it would accept it."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "The parameter messaging_product is required."
    if not _is_filled_str(body.get("to")):
        return "The parameter to is required."
    kind = body.get("type")
    if not _is_filled_str(kind):
        return "The parameter type is required."
    if not isinstance(body.get(kind), dict):
        return f"Param {kind} is required for messages of type {kind}"
    check = _CONTENT_CHECKS.get(kind)
    return check(body[kind]) if check is not None else None


def _text_problem(text: JSONDict) -> str | None:
    if not _is_filled_str(text.get("body")):
        return "Param text['body'] is required and must be a non-empty string"
    if len(text["body"]) > 4096:
        return "Param text['body'] must be at most 4096 characters"
    return None


def _interactive_problem(interactive: JSONDict) -> str | None:
    if interactive.get("type") != "button":
        return None
    body = interactive.get("body")
    if not isinstance(body, dict) or not _is_filled_str(body.get("text")):
        return "Param interactive['body']['text'] is required"
    action = interactive.get("action")
    buttons = action.get("buttons") if isinstance(action, dict) else None
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        return "Param interactive['action']['buttons'] must hold 1 to 3 buttons"
    return _buttons_problem(buttons)


def _buttons_problem(buttons: list[Any]) -> str | None:
    if not all(_is_reply_button(button) for button in buttons):
        return "Each button must be {'type': 'reply', 'reply': {'id': ..., 'title': ...}}"
    replies: list[JSONDict] = [button["reply"] for button in buttons]
    if not all(_is_filled_str(reply.get("id")) for reply in replies):
        return "Each button must have a reply id"
    if not all(_is_filled_str(title := r.get("title")) and len(title) <= 20 for r in replies):
        return "Button title length invalid. Min length: 1, Max length: 20"
    if len({reply["id"] for reply in replies}) != len(replies):
        return "Button ids must be unique"
    return None


def _is_reply_button(button: Any) -> bool:
    return (
        isinstance(button, dict)
        and button.get("type") == "reply"
        and isinstance(button.get("reply"), dict)
    )


def _template_problem(template: JSONDict) -> str | None:
    if not _is_filled_str(template.get("name")):
        return "Param template['name'] is required"
    language = template.get("language")
    if not isinstance(language, dict) or not _is_filled_str(language.get("code")):
        return "Param template['language']['code'] is required"
    return None


_CONTENT_CHECKS: Final = {
    "text": _text_problem,
    "interactive": _interactive_problem,
    "template": _template_problem,
}


def _is_filled_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value)


def _failure_reply(failure: _Failure) -> _Reply:
    headers = {}
    if failure.retry_after is not None:
        headers["Retry-After"] = f"{failure.retry_after:g}"
    details = failure.message.removeprefix(f"(#{failure.code}) ")
    body = meta_error(failure.code, failure.message, details=details)
    return _Reply(failure.http_status, body, headers=headers)


def _visible_text(record: JSONDict) -> str | None:
    template = record.get("template")
    if isinstance(template, dict):  # what the contact reads: the template and its parameters
        values = [
            str(p.get("text"))
            for c in template.get("components") or []
            for p in c.get("parameters") or []
        ]
        return f"[template {template.get('name')}] {' | '.join(values)}".rstrip()
    for path in (("text", "body"), ("interactive", "body", "text")):
        current: Any = record
        for key in path:
            current = current.get(key) if isinstance(current, dict) else None
        if isinstance(current, str):
            return current
    return None


# --- HTTP plumbing ----------------------------------------------------------------------------


_Server = FakeHTTPServer[FakeWhatsAppAPI]


class _Handler(JSONHandler):
    server_version = "FakeWhatsAppCloudAPI/1.0"

    @property
    def fake(self) -> FakeWhatsAppAPI:
        return cast(_Server, self.server).fake

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        number = _PHONE_NUMBER_PATH.match(path)
        if path == "/_fake/messages":
            self._write(_Reply(200, self.fake.received))
        elif number and number["version"] == self.fake.version:
            authorization = self.headers.get("Authorization")
            self._write(
                self.fake._expired_token()
                or self.fake._handle_phone_number(number["phone_number_id"], authorization)
            )
        else:
            self._write(_not_found(self.path))

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        raw = self.read_body()
        match = _MESSAGES_PATH.match(path)
        if match and match["version"] == self.fake.version:
            reply = self.fake._expired_token() or self.fake._handle_send(
                match["phone_number_id"], self.headers.get("Authorization"), raw
            )
            self._hold(reply)
        elif path in _CONTROL_ROUTES:
            reply = _control(self.fake, path, raw)
        else:
            reply = _not_found(path)
        self._write(reply)

    def _hold(self, reply: _Reply) -> None:
        """Let the status callbacks land first: the caller must learn of the send only later."""
        if reply.hold_seconds <= 0:
            return
        deadline = time.monotonic() + reply.hold_seconds
        if reply.callbacks_done is not None:
            reply.callbacks_done.wait(reply.hold_seconds)
        time.sleep(max(0.0, deadline - time.monotonic()))

    def _write(self, reply: _Reply) -> None:
        self.write_json(reply.status, reply.body, reply.headers)


def _not_found(path: str) -> _Reply:
    return _Reply(404, meta_error(2500, f"Unknown path components: {path}"))


# --- control surface for other processes ------------------------------------------------------


def _control(fake: FakeWhatsAppAPI, path: str, raw: bytes) -> _Reply:
    try:
        body = json.loads(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise TypeError("body must be a JSON object")
        _CONTROL_ROUTES[path](fake, body)
    except (ValueError, TypeError, KeyError) as exc:
        return _Reply(400, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return _Reply(200, {"ok": True})


def _control_fail(fake: FakeWhatsAppAPI, body: JSONDict) -> None:
    message = body.get("message")
    retry_after = body.get("retry_after")
    fake.fail_next(
        int(body["code"]),
        int(body["http_status"]),
        count=int(body.get("count", 1)),
        message=str(message) if message is not None else None,
        retry_after=float(retry_after) if retry_after is not None else None,
    )


def _control_not_on_whatsapp(fake: FakeWhatsAppAPI, body: JSONDict) -> None:
    fake.not_on_whatsapp(*(str(phone) for phone in body["phones"]))


def _control_hold(fake: FakeWhatsAppAPI, body: JSONDict) -> None:
    fake.hold_next(float(body["seconds"]))


def _control_reset(fake: FakeWhatsAppAPI, body: JSONDict) -> None:
    fake.reset()


def _control_number(fake: FakeWhatsAppAPI, body: JSONDict) -> None:
    token = body.get("access_token")
    fake.add_number(str(body["phone_number_id"]), str(token) if token is not None else None)


def _control_token(fake: FakeWhatsAppAPI, body: JSONDict) -> None:
    if body["expired"]:
        fake.expire_token()
    else:
        fake.renew_token()


_CONTROL_ROUTES: Final = {
    "/_fake/fail": _control_fail,
    "/_fake/hold": _control_hold,
    "/_fake/reset": _control_reset,
    "/_fake/number": _control_number,
    "/_fake/token": _control_token,
    "/_fake/not_on_whatsapp": _control_not_on_whatsapp,
}


# --- standalone -------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Loopback fake of the WhatsApp Cloud API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_STANDALONE_PORT)
    parser.add_argument("--webhook-url", default=None, help="where to POST status callbacks")
    parser.add_argument("--app-secret", default=None, help="signs the status callbacks")
    parser.add_argument("--access-token", default=DEFAULT_ACCESS_TOKEN)
    parser.add_argument("--phone-number-id", default=DEFAULT_PHONE_NUMBER_ID)
    parser.add_argument("--version", default="v21.0")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    fake = FakeWhatsAppAPI(
        host=args.host,
        port=args.port,
        access_token=args.access_token,
        phone_number_id=args.phone_number_id,
        webhook_url=args.webhook_url,
        app_secret=args.app_secret,
        version=args.version,
    )
    serve_until_signalled(fake)


if __name__ == "__main__":
    main()
