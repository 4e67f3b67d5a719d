"""LinkedIn as a Parley channel: outreach actions out through the gateway, its signed webhooks in.

``LinkedInChannel`` is an ``OutreachChannel`` (``perform`` for the four ``linkedin_*`` action
types, from the seat in the ``SenderIdentity``) and the conversational half of a ``Channel``
(``verify`` and ``parse`` for the webhook route). Its ``send`` exists so a conversation can
answer a lead who wrote back: it performs a ``linkedin_message`` with the ``client_ref`` as
``Idempotency-Key``, from the reply seat configured here (``Channel.send`` names no sender). Use
``send_as`` when the seat is known, e.g. the ``identity_address`` the lead wrote to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parley.channels.base import (
    ActionResult,
    Capabilities,
    InboundBatch,
    OutboundMessage,
    OutreachAction,
    SenderHealth,
    SenderIdentity,
)
from parley.channels.linkedin.client import (
    ACTION_TYPES,
    CAPABILITIES,
    LINKEDIN_MESSAGE,
    AccountStatus,
    LinkedInGatewayClient,
)
from parley.channels.linkedin.wire import (
    CHANNEL,
    SIGNATURE_HEADER,
    GatewayEvent,
    parse_events,
    parse_webhook,
    verify_signature,
)
from parley.errors import IdentityExpired, PermanentChannelError

if TYPE_CHECKING:
    from parley.channels.base import Channel, OutreachChannel


@dataclass(frozen=True)
class LinkedInConfig:
    """Defaults for every seat (a seat's own settings win) and the webhook secret."""

    gateway_url: str | None = None
    api_key: str | None = None
    webhook_secret: str = ""
    reply_account_id: str | None = None  # the seat ``send`` answers from
    timeout_seconds: float = 10.0


class LinkedInChannel:
    name = CHANNEL
    capabilities: Capabilities = CAPABILITIES
    action_types: frozenset[str] = ACTION_TYPES

    def __init__(self, config: LinkedInConfig) -> None:
        self.config = config
        self._client: LinkedInGatewayClient | None = None

    @property
    def client(self) -> LinkedInGatewayClient:
        """Created on first call: the webhook process only verifies and parses."""
        if self._client is None:
            self._client = LinkedInGatewayClient(
                self.config.gateway_url,
                self.config.api_key,
                timeout=self.config.timeout_seconds,
            )
        return self._client

    # --- webhooks -----------------------------------------------------------------------------

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        verify_signature(body, _header(headers, SIGNATURE_HEADER), self.config.webhook_secret)

    def parse(self, body: bytes) -> InboundBatch:
        return parse_webhook(body)

    def events(self, body: bytes) -> list[GatewayEvent]:
        """The same body as typed events, for the route to act on accepted connections and
        expired sessions."""
        return parse_events(body)

    # --- outreach -----------------------------------------------------------------------------

    async def perform(self, action: OutreachAction, sender: SenderIdentity) -> ActionResult:
        return await self.client.perform(action, sender)

    async def account_status(self, sender: SenderIdentity) -> AccountStatus:
        return await self.client.account_status(sender)

    async def check_sender(self, sender: SenderIdentity) -> SenderHealth:
        """The gateway's ``GET /v1/accounts/{id}``: healthy while the session is connected."""
        status = await self.client.account_status(sender)
        detail = f"the gateway says the seat {status.account_id!r} is {status.status}"
        return SenderHealth(status.connected, detail, status.inmail_credits)

    # --- conversation replies -----------------------------------------------------------------

    async def send(self, to: str, message: OutboundMessage, *, client_ref: str) -> str:
        return await self.send_as(self.reply_sender(), to, message, client_ref=client_ref)

    async def send_as(
        self, sender: SenderIdentity, to: str, message: OutboundMessage, *, client_ref: str
    ) -> str:
        """A conversation reply as a ``linkedin_message``; returns the gateway's message id."""
        if message.buttons:
            # The campaign validator keeps buttons off LinkedIn; never drop them silently.
            raise PermanentChannelError("LinkedIn messages cannot carry reply buttons")
        action = OutreachAction(LINKEDIN_MESSAGE, to, client_ref, text=message.text)
        result = await self.perform(action, sender)
        if result.provider_id is None:
            raise PermanentChannelError(
                f"the LinkedIn gateway accepted message {client_ref!r} without an id; "
                "it was probably sent, so it is not retried"
            )
        return result.provider_id

    def reply_sender(self) -> SenderIdentity:
        account_id = self.config.reply_account_id
        if not account_id:
            raise IdentityExpired("no LinkedIn reply seat (reply_account_id) is configured")
        return SenderIdentity(CHANNEL, account_id, {"account_id": account_id})

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup for plain dicts as well as case-insensitive mappings."""
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


if TYPE_CHECKING:
    # mypy proves the class keeps both contracts.
    _as_channel: Channel = LinkedInChannel(LinkedInConfig())
    _as_outreach: OutreachChannel = LinkedInChannel(LinkedInConfig())
