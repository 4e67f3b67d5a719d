"""WhatsApp as a Parley ``Channel``: Meta's signed webhooks in, the Cloud API out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from parley.channels.base import Capabilities, InboundBatch, OutboundMessage
from parley.channels.whatsapp.client import CAPABILITIES, WhatsAppClient
from parley.channels.whatsapp.wire import CHANNEL, SIGNATURE_HEADER, parse_webhook, verify_signature


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

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        verify_signature(body, _header(headers, SIGNATURE_HEADER), self.config.app_secret)

    def parse(self, body: bytes) -> InboundBatch:
        return parse_webhook(body)

    async def send(self, to: str, message: OutboundMessage, *, client_ref: str) -> str:
        if message.buttons:
            return await self.client.send_buttons(
                to, message.text, list(message.buttons), client_ref=client_ref
            )
        return await self.client.send_text(to, message.text, client_ref=client_ref)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup that works for plain dicts as well as case-insensitive mappings."""
    return headers.get(name) or headers.get(name.lower())
