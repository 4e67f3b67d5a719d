"""Timing, simulated users and transcript checks: what every figure shares.

A turn is timed as a user sees it: from the moment the harness starts the signed webhook POST
of an inbound message to the moment the loopback Graph API (running in this process) records
the bot's reply. Both clocks are this process's ``perf_counter``, so no clock skew and no
polling delay enters a figure. Every reply is compared with the exact text expected at that
point of the conversation, and every transcript is compared again, whole, after the figure
settled: a lost, duplicated or reordered message fails the run instead of producing a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

import httpx

from devkit.fakes.whatsapp_fake import FakeWhatsAppAPI
from devkit.fakes.whatsapp_payloads import build_button_reply_payload, build_text_message_payload
from parley.channels.whatsapp.wire import SIGNATURE_HEADER, sign

JSONDict = dict[str, Any]

# The loopback Graph API and CRM are ``ThreadingHTTPServer``s; socketserver's listen backlog
# of 5 makes a thousand concurrent senders see refused/reset connections (and retry seconds
# later), which Meta's API never does. Only this process's servers are affected.
ThreadingHTTPServer.request_queue_size = 1024


class FigureError(RuntimeError):
    """A figure cannot be reported: a message was lost, duplicated or wrong, or a peer failed."""


# --- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so p50 of two samples is
    their mean and small samples do not jump to the maximum."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float], quantiles: Iterable[int] = (50, 95)) -> JSONDict:
    if not seconds:
        raise FigureError("no samples")
    out: JSONDict = {f"p{q}": round(percentile(seconds, q) * 1000, 1) for q in quantiles}
    out["n"] = len(seconds)
    return out


# --- the provider ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """One message the bot sent, as the fake Graph API recorded it."""

    at: float  # perf_counter() when the fake received it
    text: str
    wamid: str


def _visible_text(body: JSONDict) -> str:
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("body"), str):
        return str(text["body"])
    interactive = body.get("interactive")
    if isinstance(interactive, dict):
        inner = interactive.get("body")
        if isinstance(inner, dict) and isinstance(inner.get("text"), str):
            return str(inner["text"])
    return f"<{body.get('type')}>"


class TimedFake(FakeWhatsAppAPI):
    """The loopback Graph API, stamping each send the instant it is recorded and handing it to
    the waiting simulated user (``asyncio`` queue) without any polling."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._by_phone: dict[str, list[Sent]] = defaultdict(list)
        self._listeners: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Sent]]] = {}
        self._sent_lock = threading.Lock()

    def _record(self, body: JSONDict, phone_number_id: str) -> JSONDict:
        at = time.perf_counter()
        record = super()._record(body, phone_number_id)
        sent = Sent(at, _visible_text(record), str(record["_wamid"]))
        phone = str(record["to"])
        with self._sent_lock:
            self._by_phone[phone].append(sent)
            listener = self._listeners.get(phone)
        if listener is not None:
            loop, queue = listener
            # After a failed figure its loop is gone; the transcript keeps the message anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, sent)
        return record

    def listen(self, phone: str) -> asyncio.Queue[Sent]:
        """Called on the harness loop before the user's first POST, so nothing is missed."""
        queue: asyncio.Queue[Sent] = asyncio.Queue()
        with self._sent_lock:
            if phone in self._listeners or phone in self._by_phone:
                raise FigureError(f"phone {phone} is used twice in one run")
            self._listeners[phone] = (asyncio.get_running_loop(), queue)
        return queue

    def texts(self, phone: str) -> list[str]:
        with self._sent_lock:
            return [sent.text for sent in self._by_phone.get(phone, [])]

    def strays(self) -> list[str]:
        """Phones that got messages although no simulated user owns them."""
        with self._sent_lock:
            return sorted(set(self._by_phone) - set(self._listeners))

    def total_sent(self) -> int:
        with self._sent_lock:
            return sum(len(sent) for sent in self._by_phone.values())

    def callbacks_pending(self) -> int:
        """Status callbacks ("sent", "delivered") still queued for the webhook."""
        return self._callbacks.qsize()


# --- simulated users --------------------------------------------------------------------------


# Seconds before each re-delivery of a webhook that failed (Meta retries with back-off too).
REDELIVERY_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def redeliveries(chats: Sequence[Chat]) -> JSONDict:
    """How many webhook deliveries had to be repeated, and the commonest reason."""
    from collections import Counter

    reasons = Counter(reason for c in chats for reason in c.redelivery_reasons)
    out: JSONDict = {"redeliveries": sum(c.redeliveries for c in chats)}
    if reasons:
        out["redelivery_reason"] = reasons.most_common(1)[0][0]
    return out


@dataclass(frozen=True)
class Endpoint:
    """Where a peer's webhook listens and how Meta would sign for it."""

    url: str
    app_secret: str
    phone_number_id: str


@dataclass(frozen=True, slots=True)
class Turn:
    kind: str
    latency: float  # POST start → the first reply recorded by the fake (seconds)
    ack: float  # POST start → the webhook's 200 (seconds)
    started: float  # perf_counter() at POST start
    replied: float  # perf_counter() of the last expected reply


@dataclass
class Chat:
    """One WhatsApp user: posts signed Meta payloads and checks each answer exactly."""

    phone: str
    name: str
    endpoint: Endpoint
    fake: TimedFake
    http: httpx.AsyncClient
    timeout: float = 120.0
    expected: list[str] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    sent: int = 0
    last_wamid: str = "wamid.unknown"
    turn_lock: asyncio.Lock | None = None
    redeliveries: int = 0
    redelivery_reasons: list[str] = field(default_factory=list)
    _inbox: asyncio.Queue[Sent] | None = None

    def __post_init__(self) -> None:
        self._inbox = self.fake.listen(self.phone)

    async def say(
        self,
        text: str,
        expect: list[str],
        kind: str,
        *,
        post_limit: asyncio.Semaphore | None = None,
    ) -> Turn:
        payload = build_text_message_payload(
            phone_number_id=self.endpoint.phone_number_id,
            from_phone=self.phone,
            text=text,
            contact_name=self.name,
        )
        return await self._exchange(payload, expect, kind, post_limit)

    async def press(self, reply_id: str, title: str, expect: list[str], kind: str) -> Turn:
        payload = build_button_reply_payload(
            phone_number_id=self.endpoint.phone_number_id,
            from_phone=self.phone,
            reply_id=reply_id,
            title=title,
            context_message_id=self.last_wamid,
            contact_name=self.name,
        )
        return await self._exchange(payload, expect, kind, None)

    async def _exchange(
        self,
        payload: JSONDict,
        expect: list[str],
        kind: str,
        post_limit: asyncio.Semaphore | None,
    ) -> Turn:
        """``post_limit`` bounds concurrent POSTs only (Meta's delivery concurrency), not the
        wait for the answer; ``turn_lock`` (latency figures) lets one turn at a time be in
        flight, POST to last reply, while other users may be thinking or waiting."""
        raw = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(raw, self.endpoint.app_secret),
        }
        async with self.turn_lock or contextlib.nullcontext():
            self.expected.extend(expect)
            async with post_limit or contextlib.nullcontext():
                started = time.perf_counter()
                await self._post(raw, headers)
                ack = time.perf_counter() - started
            replies = [await self._next_reply(expected, started) for expected in expect]
        self.last_wamid = replies[-1].wamid if replies else self.last_wamid
        first = replies[0].at if replies else time.perf_counter()
        turn = Turn(kind, first - started, ack, started, replies[-1].at if replies else first)
        self.turns.append(turn)
        return turn

    async def _post(self, raw: bytes, headers: dict[str, str]) -> None:
        """Deliver like Meta: a 5xx or a broken connection is delivered again, the same body
        (same message id) after a back-off, and counted — the figure still stands (nothing is
        lost if the webhook de-duplicates) but the report says how often it happened. A 4xx
        is a bug in someone's wire format and fails the figure at once."""
        problem = ""
        for backoff in (*REDELIVERY_BACKOFF, None):
            try:
                response = await self.http.post(self.endpoint.url, content=raw, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"POST failed: {exc!r}"
            else:
                if response.status_code == 200:
                    self.sent += 1
                    return
                problem = f"webhook answered {response.status_code}: {response.text[:200]}"
                if response.status_code < 500:
                    break
            if backoff is None:
                break
            self.redeliveries += 1
            self.redelivery_reasons.append(problem[:80])
            await asyncio.sleep(backoff)
        raise FigureError(f"{self.phone}: {problem} (after {self.redeliveries} re-deliveries)")

    async def _next_reply(self, expected: str, started: float) -> Sent:
        assert self._inbox is not None
        remaining = self.timeout - (time.perf_counter() - started)
        try:
            sent = await asyncio.wait_for(self._inbox.get(), max(remaining, 0.001))
        except TimeoutError:
            raise FigureError(
                f"{self.phone}: lost message — waited {self.timeout:.0f}s for {expected!r}; "
                f"transcript so far {self.fake.texts(self.phone)!r}"
            ) from None
        if sent.text != expected:
            raise FigureError(
                f"{self.phone}: expected {expected!r}, got {sent.text!r} (duplicated or "
                f"reordered message); transcript {self.fake.texts(self.phone)!r}"
            )
        return sent


async def verify_transcripts(
    figure: str, fake: TimedFake, chats: Sequence[Chat], *, settle: float = 1.0
) -> None:
    """After a figure: nothing arrived late (a duplicate from a retry), nothing is missing.
    First the status callbacks still queued are let through, so the next figure does not pay
    for this one's."""
    deadline = time.monotonic() + 600
    while fake.callbacks_pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(settle)
    problems = [
        f"{chat.phone}: expected {chat.expected!r}, got {fake.texts(chat.phone)!r}"
        for chat in chats
        if fake.texts(chat.phone) != chat.expected
    ]
    strays = fake.strays()
    if strays:
        problems.append(f"messages to phones no user owns: {strays[:5]}")
    if problems:
        raise FigureError(
            f"{figure}: {len(problems)} transcript(s) wrong (lost or duplicated messages); "
            "refusing to report it:\n  " + "\n  ".join(problems[:10])
        )


def new_http(connections: int) -> httpx.AsyncClient:
    """One pooled client for all users of a figure (a user is a phone, not a TCP stack);
    enough connections that no POST ever waits for a free one. Idle connections are dropped
    after 2 s, before uvicorn's 5 s keep-alive timeout: reusing one the server is closing
    at that very moment fails the POST (a race of the harness, not of any peer)."""
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
    )
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))


class PhoneBook:
    """Unique phone numbers per run and figure, so no two users ever share a conversation."""

    def __init__(self) -> None:
        self._stamp = int(time.time()) % 10**4
        self._figures: dict[str, int] = {}
        self._next: dict[str, int] = defaultdict(int)

    def phone(self, figure: str) -> str:
        prefix = self._figures.setdefault(figure, len(self._figures) + 10)
        number = self._next[figure]
        self._next[figure] += 1
        return f"44{prefix:02d}{self._stamp:04d}{number:06d}"


async def gather_limited(limit: int, jobs: Sequence[Any]) -> list[Any]:
    """Run coroutines with at most ``limit`` at once; the first failure cancels the rest."""
    semaphore = asyncio.Semaphore(limit)

    async def guarded(job: Any) -> Any:
        async with semaphore:
            return await job

    tasks = [asyncio.ensure_future(guarded(job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
