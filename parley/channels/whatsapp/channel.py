"""WhatsApp as a Parley ``Channel``: Meta's signed webhooks in, the Cloud API out.

One installation may have several business numbers: the configured one (the bot's) and those
of its identities. An outreach action goes out from the number in its ``SenderIdentity``
(``phone_number_id``, optionally with its own ``access_token``), because the lead's reply comes
back to the number that wrote to them and is routed by it (``parley.conversation.inbox``); a sender
that names no number uses the configured one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from parley.channels.base import (
    ActionResult,
    Capabilities,
    InboundBatch,
    OutboundMessage,
    OutreachAction,
    SenderHealth,
    SenderIdentity,
)
from parley.channels.whatsapp.client import CAPABILITIES, WhatsAppClient
from parley.channels.whatsapp.wire import CHANNEL, SIGNATURE_HEADER, parse_webhook, verify_signature
from parley.errors import PermanentChannelError


@dataclass(frozen=True)
class WhatsAppConfig:
    api_url: str
    access_token: str
    phone_number_id: str
    app_secret: str
    verify_token: str
    timeout_seconds: float = 10.0


class WhatsAppChannel:
    name = CHANNEL
    capabilities: Capabilities = CAPABILITIES

    def __init__(self, config: WhatsAppConfig) -> None:
        self.config = config
        self._client: WhatsAppClient | None = None
        self._senders: dict[tuple[str, str], WhatsAppClient] = {}

    @property
    def client(self) -> WhatsAppClient:
        """Created on first send: the webhook process only verifies and parses."""
        if self._client is None:
            self._client = WhatsAppClient(
                self.config.api_url,
                self.config.access_token,
                self.config.phone_number_id,
                timeout=self.config.timeout_seconds,
            )
        return self._client

    def client_for(self, sender: SenderIdentity) -> WhatsAppClient:
        """The client of the sender's own number (and token), or the configured number's when
        the sender names none: one client per number, created on its first send."""
        number = str(sender.settings.get("phone_number_id") or "")
        token = str(sender.settings.get("access_token") or self.config.access_token)
        if not number or (number, token) == (self.config.phone_number_id, self.config.access_token):
            return self.client
        client = self._senders.get((number, token))
        if client is None:
            client = WhatsAppClient(
                self.config.api_url, token, number, timeout=self.config.timeout_seconds
            )
            self._senders[(number, token)] = client
        return client

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        verify_signature(body, _header(headers, SIGNATURE_HEADER), self.config.app_secret)

    def parse(self, body: bytes) -> InboundBatch:
        return parse_webhook(body)

    async def send(self, to: str, message: OutboundMessage, *, client_ref: str) -> str:
        return await _send_on(self.client, to, message, client_ref)

    async def send_as(
        self, sender: SenderIdentity, to: str, message: OutboundMessage, *, client_ref: str
    ) -> str:
        """A conversation message from the conversation identity's number: the contact's
        answer comes back to the number that wrote, and is routed by it."""
        return await _send_on(self.client_for(sender), to, message, client_ref)

    action_types: frozenset[str] = frozenset({"whatsapp_template"})

    async def perform(self, action: OutreachAction, sender: SenderIdentity) -> ActionResult:
        """A template to a lead (an outreach ``whatsapp_template`` action); the node's text, if
        any, is the template's one body parameter, and ``language`` comes from the sender's
        settings (default ``en``)."""
        if action.type != "whatsapp_template" or not action.template:
            raise PermanentChannelError(f"WhatsApp performs templates only, not {action.type!r}")
        parameters = action.parameters or ((action.text,) if action.text else ())
        wamid = await self.client_for(sender).send_template(
            action.to,
            action.template,
            parameters,
            language=str(sender.settings.get("language", "en")),
            client_ref=action.client_ref,
        )
        return ActionResult(wamid)

    async def check_sender(self, sender: SenderIdentity) -> SenderHealth:
        """Whether the access token works again: the sender's phone number object (its
        ``phone_number_id`` setting, else this channel's number), read with the token; an
        expired token raises ``IdentityExpired`` (401, code 190)."""
        number = await self.client_for(sender).phone_number()
        number_id = str(number.get("id") or sender.address or self.config.phone_number_id)
        shown = number.get("display_phone_number") or number_id
        return SenderHealth(True, f"the Cloud API reads phone number {shown} with the token")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        senders, self._senders = self._senders, {}
        for client in senders.values():
            await client.aclose()


async def _send_on(
    client: WhatsAppClient, to: str, message: OutboundMessage, client_ref: str
) -> str:
    if message.buttons:
        return await client.send_buttons(
            to, message.text, list(message.buttons), client_ref=client_ref
        )
    return await client.send_text(to, message.text, client_ref=client_ref)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup that works for plain dicts as well as case-insensitive mappings."""
    return headers.get(name) or headers.get(name.lower())
