"""Async client for sending messages through the WhatsApp Cloud API (Meta's Graph API).

Every failure leaves as one of the ``ChannelError`` kinds so callers decide retry, wait, escalate
or give up from the type alone, never from Meta's numeric codes.
"""

from __future__ import annotations

import email.utils
import time
from types import TracebackType
from typing import Final, Self

import httpx

from parley.channels.base import Capabilities, JSONDict
from parley.errors import (
    ChannelError,
    IdentityExpired,
    NotOnWhatsApp,
    OutsideCustomerWindow,
    PairRateLimited,
    PermanentChannelError,
    RateLimited,
    TransientChannelError,
)

MAX_BUTTONS: Final = 3
MAX_BUTTON_TITLE: Final = 20
MAX_BUTTON_ID: Final = 256
MAX_TEXT_LENGTH: Final = 4096

CAPABILITIES: Final = Capabilities(
    max_buttons=MAX_BUTTONS,
    max_button_title=MAX_BUTTON_TITLE,
    max_button_id=MAX_BUTTON_ID,
    max_text_length=MAX_TEXT_LENGTH,
    echoes_reference=True,  # biz_opaque_callback_data comes back in every status callback
)

# Meta's codes for throttling: cloud API, business/consumer pair, WABA, and app-level.
RATE_LIMIT_CODES: Final = frozenset({130429, 131056, 80007, 4})
PAIR_RATE_LIMIT_CODE: Final = 131056  # too many from the business to one user: that pair only
OUTSIDE_WINDOW_CODE: Final = 131047
EXPIRED_TOKEN_CODE: Final = 190
NOT_A_WHATSAPP_USER_CODE: Final = 131026  # "Message Undeliverable": no WhatsApp account


class WhatsAppClient:
    """Sends text and reply-button messages and returns Meta's message id (the wamid)."""

    def __init__(
        self,
        api_url: str,
        access_token: str,
        phone_number_id: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api_url = api_url.rstrip("/")
        self._phone_number_id = phone_number_id
        self._messages_url = f"{api_url.rstrip('/')}/{phone_number_id}/messages"
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {access_token}"},
        )

    async def send_text(self, to: str, body: str, *, client_ref: str | None = None) -> str:
        payload = _envelope(to, client_ref)
        payload.update({"type": "text", "text": {"body": body, "preview_url": False}})
        return await self._send(payload)

    async def send_buttons(
        self,
        to: str,
        body: str,
        buttons: list[tuple[str, str]],
        *,
        client_ref: str | None = None,
    ) -> str:
        _check_buttons(buttons)
        payload = _envelope(to, client_ref)
        payload["type"] = "interactive"
        payload["interactive"] = {
            "type": "button",
            "body": {"text": body},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": button_id, "title": title}}
                    for button_id, title in buttons
                ]
            },
        }
        return await self._send(payload)

    async def send_template(
        self,
        to: str,
        name: str,
        parameters: tuple[str, ...] = (),
        *,
        language: str = "en",
        client_ref: str | None = None,
    ) -> str:
        """A business-initiated message: outside the customer's 24-hour window only an
        approved template may be sent (anything else fails with 131047). ``parameters`` fill
        the template body's ``{{1}}``, ``{{2}}``, …; 131056 (too many to one user) is a rate
        limit like 130429."""
        payload = _envelope(to, client_ref)
        template: JSONDict = {"name": name, "language": {"code": language}}
        if parameters:
            template["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
            ]
        payload.update({"type": "template", "template": template})
        return await self._send(payload)

    async def phone_number(self, phone_number_id: str | None = None) -> JSONDict:
        """The Cloud API's phone number object (``GET /{version}/{phone-number-id}``): read
        with our token, so it answers whether the token still works (an expired one is 401,
        code 190) without sending anything."""
        url = f"{self._api_url}/{phone_number_id or self._phone_number_id}"
        try:
            response = await self._http.get(url)
        except httpx.TransportError as exc:
            raise TransientChannelError(
                f"WhatsApp API unreachable: {exc!r}", maybe_sent=False
            ) from exc
        if not response.is_success:
            raise error_from_response(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {}

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, payload: JSONDict) -> str:
        try:
            response = await self._http.post(self._messages_url, json=payload)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Never reached Meta: known not sent.
            raise TransientChannelError(
                f"WhatsApp API unreachable: {exc!r}", maybe_sent=False
            ) from exc
        except httpx.TimeoutException as exc:
            # The provider may have accepted it: callers reconcile via client_ref.
            raise TransientChannelError(f"WhatsApp API timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise TransientChannelError(f"WhatsApp API connection lost: {exc!r}") from exc
        if not response.is_success:
            raise error_from_response(response)
        return _wamid_of(response)


def _envelope(to: str, client_ref: str | None) -> JSONDict:
    payload: JSONDict = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
    if client_ref is not None:
        payload["biz_opaque_callback_data"] = client_ref
    return payload


def _check_buttons(buttons: list[tuple[str, str]]) -> None:
    """Refuse locally what Meta would refuse, so the caller sees a ValueError, not a 400."""
    if not 1 <= len(buttons) <= MAX_BUTTONS:
        raise ValueError(f"WhatsApp allows 1 to {MAX_BUTTONS} reply buttons, got {len(buttons)}")
    ids = [button_id for button_id, _ in buttons]
    if len(set(ids)) != len(ids):
        raise ValueError(f"reply button ids must be unique, got {ids}")
    for button_id, title in buttons:
        if not 1 <= len(button_id) <= MAX_BUTTON_ID:
            raise ValueError(f"button id must be 1 to {MAX_BUTTON_ID} characters: {button_id!r}")
        if not 1 <= len(title) <= MAX_BUTTON_TITLE:
            raise ValueError(f"button title must be 1 to {MAX_BUTTON_TITLE} characters: {title!r}")


def _wamid_of(response: httpx.Response) -> str:
    try:
        body = response.json()
        wamid = body["messages"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        wamid = None
    if not isinstance(wamid, str) or not wamid:
        raise PermanentChannelError(
            f"WhatsApp API answered HTTP {response.status_code} without a message id: "
            f"{response.text[:200]!r}",
            code=None,
            http_status=response.status_code,
        )
    return wamid


def error_from_response(response: httpx.Response) -> ChannelError:
    """Classify a refused call by Meta's error code first, then by HTTP status."""
    status = response.status_code
    code, description = _describe_error(response)
    message = f"WhatsApp API error (HTTP {status}, code {code}): {description}"
    if code == PAIR_RATE_LIMIT_CODE:
        return PairRateLimited(
            message, code=code, http_status=status, retry_after=_retry_after(response)
        )
    if code in RATE_LIMIT_CODES or status == 429:
        return RateLimited(
            message, code=code, http_status=status, retry_after=_retry_after(response)
        )
    if code == OUTSIDE_WINDOW_CODE:
        return OutsideCustomerWindow(message, code=code, http_status=status)
    if code == NOT_A_WHATSAPP_USER_CODE:
        return NotOnWhatsApp(message, code=code, http_status=status)
    if code == EXPIRED_TOKEN_CODE or status == 401:
        return IdentityExpired(message, code=code, http_status=status)
    if status >= 500:
        return TransientChannelError(message, code=code, http_status=status)
    return PermanentChannelError(message, code=code, http_status=status)


def _describe_error(response: httpx.Response) -> tuple[int | None, str]:
    """Meta's error code and a one-line human description, tolerating non-Meta bodies."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return None, repr(response.text[:200])
    code = error.get("code")
    parts = [
        str(error.get("message") or "no message"),
        f"subcode {error['error_subcode']}" if "error_subcode" in error else "",
        _details(error),
        f"fbtrace_id {error['fbtrace_id']}" if "fbtrace_id" in error else "",
    ]
    return (code if isinstance(code, int) else None), "; ".join(part for part in parts if part)


def _details(error: JSONDict) -> str:
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    return str(details) if details else ""


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header, in either of its forms (delta or HTTP date)."""
    header = response.headers.get("Retry-After")
    if header is None:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
