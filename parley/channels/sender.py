"""Adapting provider clients to the one ``send(to, outbound, client_ref)`` the steps use."""

from __future__ import annotations

from parley.channels.whatsapp import WhatsAppClient
from parley.conversation import Outbound


class WhatsAppSender:
    def __init__(self, client: WhatsAppClient) -> None:
        self.client = client

    async def send(self, to: str, outbound: Outbound, *, client_ref: str) -> str:
        if outbound.buttons:
            return await self.client.send_buttons(
                to, outbound.text, list(outbound.buttons), client_ref=client_ref
            )
        return await self.client.send_text(to, outbound.text, client_ref=client_ref)
