"""A loopback fake of the LinkedIn outreach gateway, served over real HTTP.

It speaks the contract documented in ``parley.channels.linkedin.client``: the seven action
endpoints (idempotent by ``Idempotency-Key``), the account status, the error bodies, and signed
webhooks to Parley. Per-seat state (session, InMail credits, connections) makes LinkedIn's
refusals happen for the right reasons, and failure injection makes rate limits, expired
sessions and "the gateway did it but the caller never heard back" reproducible on demand.

Run it alone for ``parley dev``::

    python -m devkit.fakes.linkedin_gateway --port 8091 \\
        --webhook-url http://127.0.0.1:8000/webhooks/linkedin --webhook-secret s3cret
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import queue
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

import httpx

from devkit.fakes.linkedin_media import MEDIA_ENDPOINTS, like_problem, media_problem
from devkit.fakes.linkedin_payloads import (
    build_invitation_accepted,
    build_message_delivered,
    build_message_received,
    build_session_expired,
    new_id,
)
from devkit.fakes.loopback import FakeHTTPServer, JSONHandler, LoopbackHTTP, serve_until_signalled
from parley.channels.base import JSONDict, SenderIdentity
from parley.channels.linkedin.client import (
    IDEMPOTENCY_HEADER,
    MAX_ATTACHMENT_BYTES,
    MAX_NOTE_LENGTH,
    MAX_TEXT_LENGTH,
    REPLAYED_HEADER,
)
from parley.channels.linkedin.wire import CHANNEL, SIGNATURE_HEADER, sign

logger = logging.getLogger(__name__)


DEFAULT_API_KEY: Final = "parley-demo-gateway-key"
DEFAULT_ACCOUNT_ID: Final = "demo-seat"
DEFAULT_INMAIL_CREDITS: Final = 5
DEFAULT_STANDALONE_PORT: Final = 8091
WEBHOOK_ATTEMPTS: Final = 4
WEBHOOK_FIRST_BACKOFF: Final = 0.1
CONTROL_DELIVERY_WAIT: Final = 10.0
KEEP_ALIVE_SECONDS: Final = 30.0

# endpoint -> what the fake records it as, and the prefix of the ids it hands out
ENDPOINT_KINDS: Final = {
    "messages": ("message", "msg"),
    "invitations": ("invitation", "inv"),
    "inmails": ("inmail", "inm"),
    "profile-visits": ("profile_visit", "vis"),
    "attachments": ("attachment", "att"),
    "voice-messages": ("voice", "voi"),
    "post-likes": ("like", "lik"),
}

_ACTION_PATH: Final = re.compile(
    r"^/v1/accounts/(?P<account>[^/]+)/"
    r"(?P<endpoint>messages|invitations|inmails|profile-visits|attachments|voice-messages|post-likes)$"
)
_ACCOUNT_PATH: Final = re.compile(r"^/v1/accounts/(?P<account>[^/]+)$")


@dataclass(frozen=True, slots=True)
class PerformedAction:
    """One action the gateway did (once per Idempotency-Key)."""

    id: str
    account_id: str
    kind: str  # message, invitation, inmail, profile_visit, attachment, voice, like
    to: str
    body: JSONDict
    idempotency_key: str
    at: float

    @property
    def text(self) -> str | None:
        value = self.body.get("text", self.body.get("note"))
        return value if isinstance(value, str) else None

    def to_json(self) -> JSONDict:
        return asdict(self)


@dataclass(slots=True)
class AccountState:
    """A seat at the gateway, as far as LinkedIn's refusals depend on it."""

    account_id: str
    inmail_credits: int = DEFAULT_INMAIL_CREDITS
    session_expired: bool = False
    connections: set[str] = field(default_factory=set)
    pending_invitations: dict[str, PerformedAction] = field(default_factory=dict)

    def status(self) -> JSONDict:
        return {
            "account_id": self.account_id,
            "status": "expired" if self.session_expired else "connected",
            "inmail_credits": self.inmail_credits,
        }


@dataclass(slots=True)
class WebhookDelivery:
    """One signed POST to Parley, delivered in the background in order; wait on it to know."""

    event: JSONDict
    done: threading.Event = field(default_factory=threading.Event)
    status: int | None = None  # Parley's last answer; None: never reached
    attempts: int = 0

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def wait(self, timeout: float) -> bool:
        """True once delivered and accepted (after retries), False otherwise."""
        return self.done.wait(timeout) and self.accepted


@dataclass(frozen=True, slots=True)
class _Failure:
    error_type: str
    http_status: int
    message: str
    retry_after: float | str | None = None


@dataclass(slots=True)
class _Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    hold_seconds: float = 0.0
    webhooks: list[WebhookDelivery] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _ActionRequest:
    account_id: str
    endpoint: str
    authorization: str | None
    idempotency_key: str | None
    raw: bytes


class FakeLinkedInGateway(LoopbackHTTP):
    """Performs actions like a gateway would, records them, and reports events to a webhook."""

    what = "the fake LinkedIn gateway"
    thread_name = "fake-linkedin"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        accounts: Iterable[str] = (DEFAULT_ACCOUNT_ID,),
        inmail_credits: int = DEFAULT_INMAIL_CREDITS,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        require_connection: bool = True,
        auto_delivered: bool = True,
        max_attachment_bytes: int = MAX_ATTACHMENT_BYTES,
    ) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.require_connection = require_connection
        self.auto_delivered = auto_delivered  # a message.delivered webhook after each message
        self.max_attachment_bytes = max_attachment_bytes  # LinkedIn's 20 MB; tests lower it
        self._initial_accounts = tuple(accounts)
        self._initial_credits = inmail_credits
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._deliveries: queue.Queue[WebhookDelivery | None] = queue.Queue()
        self._reset_state()

    def _reset_state(self) -> None:
        self._accounts = {
            account_id: AccountState(account_id, self._initial_credits)
            for account_id in self._initial_accounts
        }
        self._performed: list[PerformedAction] = []
        self._results: dict[tuple[str, str], JSONDict] = {}
        self._unavailable: set[str] = set()
        self._failures: deque[_Failure] = deque()
        self._hold_seconds = 0.0
        self._requests: Counter[str] = Counter()

    # --- lifecycle (start, stop, ``with``: LoopbackHTTP) ------------------------------------

    def _make_server(self) -> _Server:
        return _Server(self._address, self)

    def _open(self) -> None:
        self._deliveries = queue.Queue()
        super()._open()
        self._spawn("webhooks", self._deliver_webhooks, self._deliveries)

    def _wake_workers(self) -> None:
        self._deliveries.put(None)

    # --- what clients and tests use -----------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        """What a seat's ``gateway_url`` setting holds; ``/_fake/...`` control lives here too."""
        return self.base_url

    def sender(self, account_id: str = DEFAULT_ACCOUNT_ID) -> SenderIdentity:
        """A ``SenderIdentity`` for one of the fake's seats, settings filled in."""
        settings = {"account_id": account_id, "gateway_url": self.gateway_url}
        return SenderIdentity(CHANNEL, account_id, {**settings, "api_key": self.api_key})

    @property
    def performed(self) -> list[PerformedAction]:
        with self._lock:
            return list(self._performed)

    def actions_to(self, profile: str) -> list[PerformedAction]:
        return [action for action in self.performed if action.to == profile]

    def wait_for_actions(self, n: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self._performed) >= n, timeout)

    def account(self, account_id: str) -> AccountState:
        """A copy of the seat's state, to assert on."""
        with self._lock:
            return copy.deepcopy(self._known_account(account_id))

    def account_statuses(self) -> list[JSONDict]:
        """What ``GET /v1/accounts/{id}`` would say of each seat."""
        with self._lock:
            return [self._accounts[account_id].status() for account_id in sorted(self._accounts)]

    # --- per-seat state -----------------------------------------------------------------------

    def add_account(
        self,
        account_id: str,
        *,
        inmail_credits: int | None = None,
        connections: Iterable[str] = (),
    ) -> None:
        credits = self._initial_credits if inmail_credits is None else inmail_credits
        with self._lock:
            self._accounts[account_id] = AccountState(account_id, credits, False, set(connections))

    def connect(self, account_id: str, profile: str) -> None:
        """Make ``profile`` a first-degree connection of the seat, silently."""
        with self._lock:
            self._known_account(account_id).connections.add(profile)

    def set_inmail_credits(self, account_id: str, credits: int) -> None:
        with self._lock:
            self._known_account(account_id).inmail_credits = credits

    def expire_session(self, account_id: str) -> None:
        """LinkedIn logged the seat out: every action now fails with ``session_expired``."""
        self._set_expired(account_id, True)

    def renew_session(self, account_id: str) -> None:
        self._set_expired(account_id, False)

    def mark_unavailable(self, profile: str) -> None:
        """The profile is gone or blocks us: actions to it fail with ``recipient_unavailable``."""
        with self._lock:
            self._unavailable.add(profile)

    def _set_expired(self, account_id: str, expired: bool) -> None:
        with self._lock:
            self._known_account(account_id).session_expired = expired

    def _known_account(self, account_id: str) -> AccountState:
        try:
            return self._accounts[account_id]
        except KeyError:
            raise KeyError(f"the fake gateway has no account {account_id!r}") from None

    # --- failure injection --------------------------------------------------------------------

    def fail_next(
        self,
        error_type: str,
        http_status: int,
        count: int = 1,
        *,
        retry_after: float | str | None = None,
        message: str | None = None,
    ) -> None:
        """Refuse the next ``count`` action calls with this error, before doing anything.
        ``retry_after`` is sent as ``Retry-After``: seconds, or a string verbatim (HTTP date)."""
        text = message or f"injected {error_type}"
        with self._lock:
            self._failures.extend([_Failure(error_type, http_status, text, retry_after)] * count)

    def hold_next(self, seconds: float) -> None:
        """Delay the next action's answer, after performing it and sending its webhooks: the
        caller times out although the gateway did it."""
        with self._lock:
            self._hold_seconds = seconds

    def reset(self) -> None:
        """Back to the state at construction: initial seats, nothing performed or injected."""
        with self._lock:
            self._reset_state()

    # --- webhooks to Parley -------------------------------------------------------------------

    def deliver_message(
        self,
        account_id: str,
        from_profile: str,
        text: str | None,
        *,
        from_name: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
    ) -> WebhookDelivery:
        """A lead writes to the seat: ``message.received``."""
        return self.deliver_event(
            build_message_received(
                account_id=account_id,
                from_profile=from_profile,
                text=text,
                from_name=from_name,
                reply_to=reply_to,
                message_id=message_id,
            )
        )

    def accept_invitation(self, account_id: str, profile: str) -> WebhookDelivery:
        """The lead accepts (our pending invitation, if any): connected, ``invitation.accepted``."""
        with self._lock:
            account = self._known_account(account_id)
            account.connections.add(profile)
            invitation = account.pending_invitations.pop(profile, None)
        return self.deliver_event(
            build_invitation_accepted(
                account_id=account_id,
                profile=profile,
                invitation_id=invitation.id if invitation else None,
                client_ref=invitation.idempotency_key if invitation else None,
            )
        )

    def announce_session_expired(
        self, account_id: str, reason: str = "LinkedIn logged the seat out"
    ) -> WebhookDelivery:
        """The session expires and the gateway says so: ``account.session_expired``."""
        self.expire_session(account_id)
        return self.deliver_event(build_session_expired(account_id=account_id, reason=reason))

    def deliver_event(self, event: JSONDict) -> WebhookDelivery:
        """Queue any event body for signed delivery; raises unless running with a webhook."""
        if not self._delivers_webhooks:
            raise RuntimeError("the fake gateway has no webhook_url and webhook_secret")
        if self._server is None:
            raise RuntimeError("the fake LinkedIn gateway is not running; call start() first")
        delivery = WebhookDelivery(event)
        self._deliveries.put(delivery)
        return delivery

    @property
    def _delivers_webhooks(self) -> bool:
        return bool(self.webhook_url and self.webhook_secret)

    def _deliver_webhooks(self, deliveries: queue.Queue[WebhookDelivery | None]) -> None:
        """One worker, so events reach Parley in the order they happened."""
        with httpx.Client(timeout=5.0) as http:
            while (delivery := deliveries.get()) is not None:
                try:
                    self._deliver(http, delivery)
                except Exception:
                    # A dead worker would silently stop every later webhook.
                    logger.exception("webhook %s failed", delivery.event.get("id"))
                finally:
                    delivery.done.set()

    def _deliver(self, http: httpx.Client, delivery: WebhookDelivery) -> None:
        raw = json.dumps(delivery.event).encode()
        for attempt in range(WEBHOOK_ATTEMPTS):
            if self._stopping.is_set():
                return
            delivery.attempts += 1
            delivery.status = self._post_webhook(http, raw)
            if delivery.accepted:
                return
            if self._stopping.wait(WEBHOOK_FIRST_BACKOFF * 2**attempt):
                return
        logger.warning("gave up delivering webhook %s", delivery.event.get("id"))

    def _post_webhook(self, http: httpx.Client, raw: bytes) -> int | None:
        # Signed per attempt, so a late retry is not refused as stale.
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(raw, cast(str, self.webhook_secret)),
        }
        try:
            response = http.post(cast(str, self.webhook_url), content=raw, headers=headers)
        except httpx.HTTPError as exc:
            logger.info("webhook to %s failed: %r", self.webhook_url, exc)
            return None
        return response.status_code

    # --- serving the contract -----------------------------------------------------------------

    def _authorized(self, authorization: str | None) -> bool:
        return authorization == f"Bearer {self.api_key}"

    def requests(self, kind: str) -> int:
        """How many calls of ``kind`` reached the gateway, refused ones included: ``action``
        (any of the action POSTs) or ``status`` (``GET /v1/accounts/{id}``)."""
        with self._lock:
            return self._requests[kind]

    def _handle_action(self, request: _ActionRequest) -> _Reply:
        with self._lock:
            self._requests["action"] += 1
        if not self._authorized(request.authorization):
            return gateway_error(401, "unauthorized", "invalid gateway API key")
        with self._lock:
            hold, self._hold_seconds = self._hold_seconds, 0.0
            failure = self._failures.popleft() if self._failures else None
        reply = self._perform(request) if failure is None else _failure_reply(failure)
        reply.hold_seconds = hold
        return reply

    def _perform(self, request: _ActionRequest) -> _Reply:
        body = _json_or_none(request.raw)
        problem = action_problem(request.endpoint, body) or _key_problem(request.idempotency_key)
        if problem is not None:
            return gateway_error(422 if isinstance(body, dict) else 400, "invalid_request", problem)
        key = cast(str, request.idempotency_key)
        with self._changed:
            account = self._accounts.get(request.account_id)
            if account is None:
                return gateway_error(404, "account_not_found", f"no account {request.account_id}")
            replayed = self._results.get((account.account_id, key))
            if replayed is not None:
                return _Reply(201, replayed, headers={REPLAYED_HEADER: "true"})
            refusal = self._refusal(account, request.endpoint, body)
            if refusal is not None:
                return refusal
            if request.endpoint not in MEDIA_ENDPOINTS:
                action, result = self._record(account, request.endpoint, body, key)
                return _Reply(201, result, webhooks=self._after(action))
        # A file is downloaded without the lock (it may take a while), then recorded once.
        rejected = media_problem(request.endpoint, body, self.max_attachment_bytes)
        if rejected is not None:
            return gateway_error(rejected.status, rejected.type, rejected.message)
        with self._changed:
            replayed = self._results.get((account.account_id, key))
            if replayed is not None:
                return _Reply(201, replayed, headers={REPLAYED_HEADER: "true"})
            action, result = self._record(account, request.endpoint, body, key)
        return _Reply(201, result, webhooks=self._after(action))

    def _refusal(self, account: AccountState, endpoint: str, body: JSONDict) -> _Reply | None:
        """Why LinkedIn would refuse this action now, in the order LinkedIn would find out
        (a file's content is checked after these: ``linkedin_media``)."""
        to = body["to"]
        if account.session_expired:
            return gateway_error(401, "session_expired", "the LinkedIn session has expired")
        if to in self._unavailable:
            return gateway_error(410, "recipient_unavailable", f"profile {to} is unavailable")
        connected = to in account.connections or not self.require_connection
        if endpoint in ("messages", *MEDIA_ENDPOINTS) and not connected:
            return gateway_error(409, "not_connected", f"{to} is not a 1st-degree connection")
        if endpoint == "post-likes":
            problem = like_problem(body)
            if problem is not None:
                return gateway_error(problem.status, problem.type, problem.message)
        if endpoint == "inmails" and account.inmail_credits <= 0:
            return gateway_error(402, "no_credits", "no InMail credits left")
        return None

    def _record(
        self, account: AccountState, endpoint: str, body: JSONDict, key: str
    ) -> tuple[PerformedAction, JSONDict]:
        """Called under the lock: the action happens once and its result is remembered."""
        kind, prefix = ENDPOINT_KINDS[endpoint]
        action = PerformedAction(
            new_id(prefix), account.account_id, kind, body["to"], body, key, time.time()
        )
        result: JSONDict = {"id": action.id}
        if kind == "inmail":
            account.inmail_credits -= 1
            result["inmail_credits"] = account.inmail_credits
        elif kind == "invitation":
            account.pending_invitations[action.to] = action
        self._performed.append(action)
        self._results[(account.account_id, key)] = result
        self._changed.notify_all()
        return action, result

    def _after(self, action: PerformedAction) -> list[WebhookDelivery]:
        if action.kind != "message" or not (self.auto_delivered and self._delivers_webhooks):
            return []
        event = build_message_delivered(
            account_id=action.account_id,
            message_id=action.id,
            to=action.to,
            client_ref=action.idempotency_key,
        )
        return [self.deliver_event(event)]

    def _handle_account(self, account_id: str, authorization: str | None) -> _Reply:
        with self._lock:
            self._requests["status"] += 1
        if not self._authorized(authorization):
            return gateway_error(401, "unauthorized", "invalid gateway API key")
        with self._lock:
            account = self._accounts.get(account_id)
            status = account.status() if account is not None else None
        if status is None:
            return gateway_error(404, "account_not_found", f"no account {account_id}")
        return _Reply(200, status)


# --- the contract's wire format ---------------------------------------------------------------


def gateway_error(status: int, error_type: str, message: str) -> _Reply:
    """An error answer in the contract's shape."""
    return _Reply(status, {"error": {"type": error_type, "message": message}})


def action_problem(endpoint: str, body: Any) -> str | None:
    """Why the gateway would refuse this body as ``invalid_request``, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not _is_filled_str(body.get("to")):
        return "'to' must be a profile URN or public id"
    required = {
        "messages": ("text",),
        "inmails": ("subject", "text"),
        "attachments": ("url",),
        "voice-messages": ("url",),
        "post-likes": ("post",),
    }.get(endpoint, ())
    missing = [name for name in required if not _is_filled_str(body.get(name))]
    if missing:
        return f"{', '.join(missing)} required"
    return _length_problem(body)


def _length_problem(body: JSONDict) -> str | None:
    text, note = body.get("text"), body.get("note")
    if isinstance(text, str) and len(text) > MAX_TEXT_LENGTH:
        return f"text longer than {MAX_TEXT_LENGTH} characters"
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE_LENGTH):
        return f"note must be a string of at most {MAX_NOTE_LENGTH} characters"
    return None


def _key_problem(key: str | None) -> str | None:
    return None if key else f"the {IDEMPOTENCY_HEADER} header is required"


def _is_filled_str(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _failure_reply(failure: _Failure) -> _Reply:
    reply = gateway_error(failure.http_status, failure.error_type, failure.message)
    if isinstance(failure.retry_after, str):
        reply.headers["Retry-After"] = failure.retry_after
    elif failure.retry_after is not None:
        reply.headers["Retry-After"] = f"{failure.retry_after:g}"
    return reply


# --- HTTP plumbing ----------------------------------------------------------------------------


class _Server(FakeHTTPServer[FakeLinkedInGateway]):
    """HTTP/1.1 with keep-alive, like a real gateway: a dispatcher's pooled client sends each
    action on a connection it already has. ``close_connections`` ends the open ones, so a
    stopped fake refuses everything at once."""

    def __init__(self, address: tuple[str, int], fake: FakeLinkedInGateway) -> None:
        super().__init__(address, _Handler, fake)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            open_now = list(self._open)
        for connection in open_now:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(JSONHandler):
    server_version = "FakeLinkedInGateway/1.0"
    protocol_version = "HTTP/1.1"  # every answer has a Content-Length; connections stay open
    # TCP_NODELAY, as every production HTTP server sets it: the answer goes out as two writes
    # (headers, body) on a kept-alive connection, and with Nagle's algorithm the body waited
    # for the client's delayed ACK — 40 ms added to every call, which capped the dispatcher
    # benchmark at ~200 actions/s whatever the dispatcher did.
    disable_nagle_algorithm = True
    timeout = KEEP_ALIVE_SECONDS  # longer than httpx's keep-alive expiry (5 s): the client
    # always drops an idle connection before the server does, so no request meets a closed one

    @property
    def fake(self) -> FakeLinkedInGateway:
        return cast(_Server, self.server).fake

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # the client went away between requests
            super().handle()

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        match = _ACCOUNT_PATH.match(path)
        if match:
            reply = self.fake._handle_account(
                unquote(match["account"]), self.headers.get("Authorization")
            )
        elif path in _CONTROL_READS:
            reply = _Reply(200, _CONTROL_READS[path](self.fake))
        else:
            reply = gateway_error(404, "not_found", f"no route GET {path}")
        self._write(reply)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        raw = self.read_body()
        match = _ACTION_PATH.match(path)
        if match:
            reply = self.fake._handle_action(self._action_request(match, raw))
            self._hold(reply)
        elif path in _CONTROL_ROUTES:
            reply = _control(self.fake, path, raw)
        else:
            reply = gateway_error(404, "not_found", f"no route POST {path}")
        self._write(reply)

    def _action_request(self, match: re.Match[str], raw: bytes) -> _ActionRequest:
        return _ActionRequest(
            account_id=unquote(match["account"]),
            endpoint=match["endpoint"],
            authorization=self.headers.get("Authorization"),
            idempotency_key=self.headers.get(IDEMPOTENCY_HEADER),
            raw=raw,
        )

    def _hold(self, reply: _Reply) -> None:
        """Let the webhooks land first: the caller must learn of the action only later."""
        if reply.hold_seconds <= 0:
            return
        deadline = time.monotonic() + reply.hold_seconds
        for delivery in reply.webhooks:
            delivery.done.wait(max(0.0, deadline - time.monotonic()))
        time.sleep(max(0.0, deadline - time.monotonic()))

    def _write(self, reply: _Reply) -> None:
        self.write_json(reply.status, reply.body, reply.headers)


# --- control surface for other processes ------------------------------------------------------


def _control(fake: FakeLinkedInGateway, path: str, raw: bytes) -> _Reply:
    try:
        body = json.loads(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise TypeError("body must be a JSON object")
        answer = _CONTROL_ROUTES[path](fake, body)
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        return _Reply(400, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return _Reply(200, {"ok": True, **(answer or {})})


def _control_fail(fake: FakeLinkedInGateway, body: JSONDict) -> None:
    retry_after = body.get("retry_after")
    fake.fail_next(
        str(body["type"]),
        int(body["status"]),
        int(body.get("count", 1)),
        retry_after=retry_after if isinstance(retry_after, str) else _float_or_none(retry_after),
        message=str(body["message"]) if body.get("message") else None,
    )


def _control_add_account(fake: FakeLinkedInGateway, body: JSONDict) -> None:
    credits = body.get("inmail_credits")
    fake.add_account(
        str(body["account_id"]),
        inmail_credits=int(credits) if credits is not None else None,
        connections=[str(profile) for profile in body.get("connections", [])],
    )


def _answer_of(delivery: WebhookDelivery) -> JSONDict:
    """Waits, so a script driving the fake knows Parley took the event before going on."""
    accepted = delivery.wait(CONTROL_DELIVERY_WAIT)
    return {"event": delivery.event, "delivered": accepted, "status": delivery.status}


def _control_deliver_message(fake: FakeLinkedInGateway, body: JSONDict) -> JSONDict:
    delivery = fake.deliver_message(
        str(body["account_id"]),
        str(body["from_profile"]),
        body.get("text"),
        from_name=body.get("from_name"),
        reply_to=body.get("reply_to"),
    )
    return _answer_of(delivery)


def _float_or_none(value: Any) -> float | None:
    return float(value) if value is not None else None


_CONTROL_ROUTES: Final[dict[str, Callable[[FakeLinkedInGateway, JSONDict], JSONDict | None]]] = {
    "/_fake/fail": _control_fail,
    "/_fake/hold": lambda fake, body: fake.hold_next(float(body["seconds"])),
    "/_fake/reset": lambda fake, body: fake.reset(),
    "/_fake/accounts": _control_add_account,
    "/_fake/connect": lambda fake, body: fake.connect(body["account_id"], body["profile"]),
    "/_fake/credits": lambda fake, body: fake.set_inmail_credits(
        body["account_id"], int(body["inmail_credits"])
    ),
    "/_fake/expire": lambda fake, body: fake.expire_session(body["account_id"]),
    "/_fake/renew": lambda fake, body: fake.renew_session(body["account_id"]),
    "/_fake/unavailable": lambda fake, body: fake.mark_unavailable(body["profile"]),
    "/_fake/deliver-message": _control_deliver_message,
    "/_fake/accept-invitation": lambda fake, body: _answer_of(
        fake.accept_invitation(body["account_id"], body["profile"])
    ),
    "/_fake/announce-session-expired": lambda fake, body: _answer_of(
        fake.announce_session_expired(body["account_id"])
    ),
}

_CONTROL_READS: Final[dict[str, Callable[[FakeLinkedInGateway], Any]]] = {
    "/_fake/actions": lambda fake: [action.to_json() for action in fake.performed],
    "/_fake/accounts": lambda fake: fake.account_statuses(),
}


# --- standalone -------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Loopback fake of the LinkedIn gateway.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_STANDALONE_PORT)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--webhook-url", default=None, help="where to POST signed events")
    parser.add_argument("--webhook-secret", default=None, help="signs the events")
    parser.add_argument(
        "--account",
        action="append",
        dest="accounts",
        help=f"a seat's account id (repeatable; default {DEFAULT_ACCOUNT_ID})",
    )
    parser.add_argument("--inmail-credits", type=int, default=DEFAULT_INMAIL_CREDITS)
    parser.add_argument(
        "--no-connection-check",
        action="store_true",
        help="let messages reach anyone, not only 1st-degree connections",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    fake = FakeLinkedInGateway(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        accounts=args.accounts or (DEFAULT_ACCOUNT_ID,),
        inmail_credits=args.inmail_credits,
        webhook_url=args.webhook_url,
        webhook_secret=args.webhook_secret,
        require_connection=not args.no_connection_check,
    )
    serve_until_signalled(fake)


if __name__ == "__main__":
    main()
