"""Async client for the LinkedIn outreach gateway: the small HTTP contract Parley defines.

LinkedIn has no public messaging API, so outreach goes through a gateway service (a Unipile- or
PhantomBuster-like product, or an adapter in front of one) that holds each seat's LinkedIn
session. Parley speaks one documented contract to whatever gateway is deployed; an adapter only
has to translate it. Every failure leaves as one of the ``parley.errors`` kinds, so callers
decide retry, wait, park or give up from the type alone.

The contract
============

Authentication
    ``Authorization: Bearer <gateway api key>`` on every request. Each LinkedIn seat is an
    ``account_id`` at the gateway. Parley reads ``account_id``, ``gateway_url`` and ``api_key``
    from ``SenderIdentity.settings``; the last two fall back to the client's constructor.

Actions
    Each is a ``POST`` of a JSON body, answered ``201 {"id": "<gateway id>"}``:

    * ``linkedin_message``: ``/v1/accounts/{account_id}/messages`` ``{"to", "text"}``
    * ``linkedin_connection``: ``/v1/accounts/{account_id}/invitations`` ``{"to", "note"?}``
    * ``linkedin_inmail``: ``/v1/accounts/{account_id}/inmails`` ``{"to", "subject", "text"}``,
      answered ``{"id", "inmail_credits"?}`` (credits left, optional)
    * ``linkedin_profile_visit``: ``/v1/accounts/{account_id}/profile-visits`` ``{"to"}``
    * ``linkedin_attachment``: ``/v1/accounts/{account_id}/attachments``
      ``{"to", "url", "filename", "text"?}``: the gateway downloads ``url`` and sends the file
      (with ``text`` as a message beside it). LinkedIn takes files up to ``MAX_ATTACHMENT_BYTES``
      (20 MB) of the types in ``ATTACHMENT_TYPES``; others are refused ``attachment_rejected``.
      Needs a 1st-degree connection, like a message (``not_connected``).
    * ``linkedin_voice``: ``/v1/accounts/{account_id}/voice-messages`` ``{"to", "url"}``: an
      audio file of one of ``VOICE_TYPES``, at most ``MAX_VOICE_SECONDS`` (60 s) long, sent as
      a voice message (``voice_rejected`` otherwise; ``not_connected`` as a message).
    * ``linkedin_like_post``: ``/v1/accounts/{account_id}/post-likes`` ``{"to", "post"}``:
      likes the lead's post at URL ``post`` (``https://www.linkedin.com/posts/...`` or
      ``.../feed/update/urn:li:activity:<id>``); a URL that is not a post is ``not_a_post``.

    ``to`` is the lead's profile URN (``urn:li:fsd_profile:ACoAA...``) or public id
    (``ada-lovelace``). Every action carries ``Idempotency-Key: <action.client_ref>`` (required):
    a repeated key on the same account returns the first *successful* result (same id, action
    performed once), with ``Idempotent-Replayed: true``. Refusals are not remembered, so a call
    that was rate limited or failed may be retried with the same key.

Account status
    ``GET /v1/accounts/{id}`` -> 200 ``{"status": "connected" | "expired", "inmail_credits": n}``.
    It answers 200 for an expired seat too, so Parley can poll for a human's renewal.

Errors
    Body ``{"error": {"type": ..., "message": ...}}``. The type decides; the HTTP status is only
    the fallback for bodies without a known type (non-JSON bodies are tolerated):

    =========================  ===========  ====================================================
    type                       HTTP         Parley error
    =========================  ===========  ====================================================
    ``session_expired``        401          ``IdentityExpired`` (a human must log the seat in)
    ``unauthorized``           401          ``IdentityExpired`` (wrong gateway api key)
    ``account_not_found``      404          ``IdentityExpired`` (seat unknown at the gateway)
    ``rate_limited``           429          ``RateLimited(retry_after)`` from ``Retry-After``
                                            (seconds or an HTTP date)
    ``not_connected``          409          ``NotConnected`` (messages need a 1st-degree link)
    ``no_credits``             402          ``CreditsExhausted`` (InMail credits used up)
    ``recipient_unavailable``  404 / 410    ``Undeliverable`` (profile gone, blocked, private)
    ``invalid_request``        400 / 422    ``PermanentChannelError``
    ``attachment_rejected``    413 / 415    ``PermanentChannelError`` (too large, unsupported
                               / 422        type, or the URL could not be downloaded)
    ``voice_rejected``         413 / 415    ``PermanentChannelError`` (too long, unsupported
                               / 422        type, or the URL could not be downloaded)
    ``not_a_post``             422          ``PermanentChannelError`` (the URL is no post)
    (other / none)             5xx          ``TransientChannelError`` with ``http_status``
    (other / none)             401, 402,    ``IdentityExpired``, ``CreditsExhausted``,
                               429, 408     ``RateLimited``, ``TransientChannelError``
    (other / none)             other 4xx    ``PermanentChannelError``
    =========================  ===========  ====================================================

    Timeouts and connection errors are ``TransientChannelError`` with ``http_status=None``: the
    gateway may have performed the action, and a retry with the same key is safe.

Local refusals (``PermanentChannelError`` before any call)
    An unknown action type, an empty ``client_ref`` or ``to``, a message or InMail without text,
    an InMail without a subject, text over ``MAX_TEXT_LENGTH`` (8000) and invitation notes over
    ``MAX_NOTE_LENGTH`` (300, LinkedIn's limit), an attachment or voice message without an
    http(s) ``file`` URL, a like without a ``post`` URL. A sender without a gateway
    ``account_id``, url or api key is ``IdentityExpired``: a human must configure the seat, so
    park rather than fail.

Webhooks
    The gateway POSTs one signed event per request to Parley; the format and its signature
    (``X-Gateway-Signature: t=<unix>,v1=<hmac>``) are documented and read in
    ``parley.channels.linkedin.wire``.
"""

from __future__ import annotations

import email.utils
import json as jsonlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote, unquote, urlsplit

import aiohttp

from parley.channels.base import (
    ActionResult,
    Capabilities,
    JSONDict,
    OutreachAction,
    SenderIdentity,
)
from parley.errors import (
    ChannelError,
    CreditsExhausted,
    IdentityExpired,
    NotConnected,
    PermanentChannelError,
    RateLimited,
    TransientChannelError,
    Undeliverable,
)

MAX_TEXT_LENGTH: Final = 8000
MAX_NOTE_LENGTH: Final = 300  # LinkedIn refuses longer invitation notes

CAPABILITIES: Final = Capabilities(
    max_buttons=0,  # LinkedIn messages carry no reply buttons
    max_button_title=0,
    max_button_id=0,
    max_text_length=MAX_TEXT_LENGTH,
    echoes_reference=True,  # message.delivered echoes the Idempotency-Key as data.client_ref
)

LINKEDIN_MESSAGE: Final = "linkedin_message"
LINKEDIN_CONNECTION: Final = "linkedin_connection"
LINKEDIN_INMAIL: Final = "linkedin_inmail"
LINKEDIN_PROFILE_VISIT: Final = "linkedin_profile_visit"
LINKEDIN_ATTACHMENT: Final = "linkedin_attachment"
LINKEDIN_VOICE: Final = "linkedin_voice"
LINKEDIN_LIKE_POST: Final = "linkedin_like_post"
ACTION_TYPES: Final = frozenset(
    {
        LINKEDIN_MESSAGE,
        LINKEDIN_CONNECTION,
        LINKEDIN_INMAIL,
        LINKEDIN_PROFILE_VISIT,
        LINKEDIN_ATTACHMENT,
        LINKEDIN_VOICE,
        LINKEDIN_LIKE_POST,
    }
)

MAX_ATTACHMENT_BYTES: Final = 20 * 1024 * 1024
ATTACHMENT_TYPES: Final = frozenset(
    {"pdf", "doc", "docx", "ppt", "pptx", "xls", "xlsx", "txt", "csv", "png", "jpg", "jpeg", "gif"}
)
"""File extensions LinkedIn messaging takes as attachments."""
MAX_VOICE_SECONDS: Final = 60
VOICE_TYPES: Final = frozenset({"wav", "m4a", "mp3", "aac", "ogg"})

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
API_PREFIX: Final = "/v1/accounts"


@dataclass(frozen=True, slots=True)
class GatewayAccount:
    """Where one seat's calls go: the gateway, its key, and the seat's id there."""

    gateway_url: str
    api_key: str
    account_id: str

    def url(self, *parts: str) -> str:
        # Quoted so an odd account id can never address another path of the gateway.
        path = "/".join((API_PREFIX, quote(self.account_id, safe=""), *parts))
        return self.gateway_url.rstrip("/") + path


@dataclass(frozen=True, slots=True)
class AccountStatus:
    """What the gateway knows of a seat: whether its session works, and InMail credits left."""

    account_id: str
    status: str
    inmail_credits: int | None

    @property
    def connected(self) -> bool:
        return self.status == "connected"


@dataclass(frozen=True, slots=True)
class GatewayAnswer:
    """One answer of the gateway, read whole: status, headers (case-insensitive) and body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


class LinkedInGatewayClient:
    """Performs outreach actions for any seat at any gateway; one connection pool for all.

    On aiohttp, where Parley's other clients use httpx: the dispatcher makes one gateway call
    per outreach action, and httpx spent ~1.5 ms of CPU on each (aiohttp ~0.4), the largest
    single cost of an action once its SQL was lean (``make bench-dispatcher``)."""

    def __init__(
        self, gateway_url: str | None = None, api_key: str | None = None, *, timeout: float = 10.0
    ) -> None:
        self.gateway_url = gateway_url
        self.api_key = api_key
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        """Created on the first call, inside the event loop that uses it (aiohttp's rule)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # Idle connections are dropped after 5 s, before a gateway's keep-alive ends:
                # a request never meets a connection the server has just closed.
                connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=5.0),
                trust_env=True,  # proxies from the environment, like Parley's other clients
            )
        return self._session

    def account_for(self, sender: SenderIdentity) -> GatewayAccount:
        """The seat's gateway coordinates: its settings first, then this client's defaults."""
        settings = sender.settings
        return GatewayAccount(
            gateway_url=_setting(settings, "gateway_url", self.gateway_url, sender),
            api_key=_setting(settings, "api_key", self.api_key, sender),
            account_id=_setting(settings, "account_id", None, sender),
        )

    async def perform(self, action: OutreachAction, sender: SenderIdentity) -> ActionResult:
        """Do ``action`` once; the gateway dedupes retries by ``action.client_ref``."""
        route = _ROUTES.get(action.type)
        if route is None:
            known = ", ".join(sorted(ACTION_TYPES))
            raise PermanentChannelError(f"unknown LinkedIn action {action.type!r}; known: {known}")
        if not action.client_ref:
            raise PermanentChannelError(f"{action.type} has no client_ref to make it idempotent")
        endpoint, build_body = route
        body = build_body(action)  # refuse locally before resolving or calling anything
        account = self.account_for(sender)
        response = await self._call(
            "POST",
            account,
            endpoint,
            json=body,
            headers={IDEMPOTENCY_HEADER: action.client_ref},
        )
        return _action_result(response, account, endpoint)

    async def account_status(self, sender: SenderIdentity) -> AccountStatus:
        account = self.account_for(sender)
        response = await self._call("GET", account)
        document = _json_object(response)
        status = document.get("status")
        if not isinstance(status, str):
            raise PermanentChannelError(
                f"LinkedIn gateway answered HTTP {response.status_code} without an account "
                f"status: {response.text[:200]!r}",
                http_status=response.status_code,
            )
        credits = document.get("inmail_credits")
        return AccountStatus(account.account_id, status, _int_or_none(credits))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        account: GatewayAccount,
        *parts: str,
        json: JSONDict | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> GatewayAnswer:
        request_headers = {"Authorization": f"Bearer {account.api_key}", **(headers or {})}
        try:
            async with self._http().request(
                method, account.url(*parts), json=json, headers=request_headers
            ) as response:
                answer = GatewayAnswer(response.status, response.headers, await response.read())
        except TimeoutError as exc:
            # The gateway may have performed it: the caller retries with the same key.
            raise TransientChannelError(f"LinkedIn gateway timed out: {exc!r}") from exc
        except aiohttp.ClientError as exc:
            raise TransientChannelError(f"LinkedIn gateway unreachable: {exc!r}") from exc
        if not answer.is_success:
            raise error_from_response(answer)
        return answer


# --- request bodies, refused locally where the gateway would refuse them ----------------------


def _message_body(action: OutreachAction) -> JSONDict:
    return {"to": _recipient(action), "text": _text(action, "a LinkedIn message")}


def _invitation_body(action: OutreachAction) -> JSONDict:
    body: JSONDict = {"to": _recipient(action)}
    if action.text:
        if len(action.text) > MAX_NOTE_LENGTH:
            raise PermanentChannelError(
                f"a LinkedIn invitation note holds at most {MAX_NOTE_LENGTH} characters, "
                f"got {len(action.text)}"
            )
        body["note"] = action.text
    return body


def _inmail_body(action: OutreachAction) -> JSONDict:
    if not action.subject:
        raise PermanentChannelError("a LinkedIn InMail needs a subject")
    return {"to": _recipient(action), "subject": action.subject, "text": _text(action, "an InMail")}


def _visit_body(action: OutreachAction) -> JSONDict:
    return {"to": _recipient(action)}


def _attachment_body(action: OutreachAction) -> JSONDict:
    url = _file_url(action)
    body: JSONDict = {"to": _recipient(action), "url": url, "filename": file_name(url)}
    if action.text:
        body["text"] = _text(action, "an attachment's message")
    return body


def _voice_body(action: OutreachAction) -> JSONDict:
    return {"to": _recipient(action), "url": _file_url(action)}


def _like_body(action: OutreachAction) -> JSONDict:
    if not action.post or not action.post.strip():
        raise PermanentChannelError("a LinkedIn like needs the post's URL ('post')")
    return {"to": _recipient(action), "post": action.post.strip()}


def _file_url(action: OutreachAction) -> str:
    url = (action.file or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PermanentChannelError(f"{action.type} needs an http(s) 'file' URL, got {url!r}")
    return url


def file_name(url: str) -> str:
    """The last part of the URL's path: what the lead sees the file called."""
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or "file"


def _recipient(action: OutreachAction) -> str:
    if not action.to.strip():
        raise PermanentChannelError(f"{action.type} has no recipient profile")
    return action.to


def _text(action: OutreachAction, what: str) -> str:
    if not action.text:
        raise PermanentChannelError(f"{what} needs a text")
    if len(action.text) > MAX_TEXT_LENGTH:
        raise PermanentChannelError(
            f"{what} holds at most {MAX_TEXT_LENGTH} characters, got {len(action.text)}"
        )
    return action.text


_ROUTES: Final[dict[str, tuple[str, Callable[[OutreachAction], JSONDict]]]] = {
    LINKEDIN_MESSAGE: ("messages", _message_body),
    LINKEDIN_CONNECTION: ("invitations", _invitation_body),
    LINKEDIN_INMAIL: ("inmails", _inmail_body),
    LINKEDIN_PROFILE_VISIT: ("profile-visits", _visit_body),
    LINKEDIN_ATTACHMENT: ("attachments", _attachment_body),
    LINKEDIN_VOICE: ("voice-messages", _voice_body),
    LINKEDIN_LIKE_POST: ("post-likes", _like_body),
}


def _setting(
    settings: Mapping[str, Any], key: str, default: str | None, sender: SenderIdentity
) -> str:
    """A seat that is not configured is parked (IdentityExpired), never failed: a human fixes it
    and the conversations go on."""
    value = settings.get(key) or default
    if not isinstance(value, str) or not value:
        raise IdentityExpired(
            f"LinkedIn sender {sender.address!r} has no gateway {key!r} configured"
        )
    return value


# --- answers ----------------------------------------------------------------------------------


def _action_result(response: GatewayAnswer, account: GatewayAccount, endpoint: str) -> ActionResult:
    """A 2xx means the gateway performed it, even if it forgot the id: never report a done action
    as failed (delivery callbacks still reconcile it by client_ref)."""
    document = _json_object(response)
    provider_id = document.get("id")
    detail: JSONDict = {
        "account_id": account.account_id,
        "endpoint": endpoint,
        "http_status": response.status_code,
        "replayed": response.headers.get(REPLAYED_HEADER, "").lower() == "true",
    }
    credits = _int_or_none(document.get("inmail_credits"))
    if credits is not None:
        detail["inmail_credits"] = credits
    return ActionResult(
        provider_id=provider_id if isinstance(provider_id, str) and provider_id else None,
        detail=detail,
    )


def _json_object(response: GatewayAnswer) -> JSONDict:
    try:
        document = response.json()
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- errors -----------------------------------------------------------------------------------


def error_from_response(response: GatewayAnswer) -> ChannelError:
    """Classify a refused call by the gateway's error type first, then by HTTP status."""
    status = response.status_code
    error_type, description = describe_error(response)
    message = f"LinkedIn gateway error (HTTP {status}, {error_type or 'no type'}): {description}"
    if error_type == "rate_limited" or (error_type not in _BY_TYPE and status == 429):
        return RateLimited(message, http_status=status, retry_after=retry_after_seconds(response))
    kind = _BY_TYPE.get(error_type or "") or _by_status(status)
    return kind(message, http_status=status)


_BY_TYPE: Final[dict[str, type[ChannelError]]] = {
    "session_expired": IdentityExpired,
    "unauthorized": IdentityExpired,
    "account_not_found": IdentityExpired,
    "rate_limited": RateLimited,
    "not_connected": NotConnected,
    "no_credits": CreditsExhausted,
    "recipient_unavailable": Undeliverable,
    "invalid_request": PermanentChannelError,
    "attachment_rejected": PermanentChannelError,
    "voice_rejected": PermanentChannelError,
    "not_a_post": PermanentChannelError,
}

_BY_STATUS: Final[dict[int, type[ChannelError]]] = {
    401: IdentityExpired,
    402: CreditsExhausted,
    408: TransientChannelError,
    429: RateLimited,
}


def _by_status(status: int) -> type[ChannelError]:
    """Only for bodies without a known type: never end a conversation (Undeliverable) on a bare
    404 that a misrouted proxy could have produced."""
    if status >= 500:
        return TransientChannelError
    return _BY_STATUS.get(status, PermanentChannelError)


def describe_error(response: GatewayAnswer) -> tuple[str | None, str]:
    """The gateway's error type and message, tolerating bodies that are not the contract's."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return None, repr(response.text[:200])
    error_type = error.get("type")
    text = error.get("message")
    return (
        error_type if isinstance(error_type, str) else None,
        str(text) if text else "no message",
    )


def retry_after_seconds(response: GatewayAnswer) -> float | None:
    """Seconds from a ``Retry-After`` header, in either of its forms (delta or HTTP date)."""
    header = response.headers.get("Retry-After")
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return _seconds_until(header)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _seconds_until(http_date: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with an unknown origin
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())
