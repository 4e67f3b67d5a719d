"""Email as a Parley channel: outreach actions out over each mailbox's SMTP server, and replies
and delivery events in through the inbound-email provider's signed webhook."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from parley.channels.base import (
    ActionResult,
    Capabilities,
    InboundBatch,
    OutboundMessage,
    OutreachAction,
    SenderHealth,
    SenderIdentity,
)
from parley.channels.email.client import (
    CAPABILITIES,
    SmtpSettings,
    check_login,
    compose,
    send_email,
)
from parley.channels.email.wire import CHANNEL, SIGNATURE_HEADER, parse_inbound, verify_signature
from parley.errors import PermanentChannelError

ACTION_TYPE: Final = "email"
DEFAULT_CONVERSATION_SUBJECT: Final = "Re: our conversation"


@dataclass(frozen=True)
class EmailConfig:
    """``webhook_secret`` signs the inbound webhook (only the webhook process needs it).
    ``conversation_sender`` is the mailbox that conversational ``send`` uses; without one,
    email is outreach-only."""

    webhook_secret: str = ""
    conversation_sender: SenderIdentity | None = None
    conversation_subject: str = DEFAULT_CONVERSATION_SUBJECT


class EmailChannel:
    """Both an ``OutreachChannel`` (``perform``) and a conversational ``Channel`` (``verify``,
    ``parse``, ``send``). Holds no connections: each send opens and closes its own."""

    name = CHANNEL
    capabilities: Capabilities = CAPABILITIES
    action_types: frozenset[str] = frozenset({ACTION_TYPE})

    def __init__(self, config: EmailConfig | None = None) -> None:
        self.config = config or EmailConfig()

    async def perform(self, action: OutreachAction, sender: SenderIdentity) -> ActionResult:
        """Send one email; ``provider_id`` is its Message-ID, known before sending and the same
        on every retry of ``action.client_ref``."""
        if action.type not in self.action_types:
            raise PermanentChannelError(f"the email channel cannot perform {action.type!r}")
        message = compose(action, sender)
        settings = SmtpSettings.from_mapping(sender.settings)
        reply = await send_email(message, settings)
        message_id = str(message["Message-ID"])
        return ActionResult(
            provider_id=message_id, detail={"to": str(message["To"]), "smtp_reply": reply[:200]}
        )

    async def check_sender(self, sender: SenderIdentity) -> SenderHealth:
        """An SMTP login (and ``MAIL FROM`` the mailbox) on the mailbox's own server; a
        refused login raises ``IdentityExpired`` like a send would."""
        settings = SmtpSettings.from_mapping(sender.settings)
        reply = await check_login(settings, sender.address)
        where = f"{settings.host}:{settings.port}"
        return SenderHealth(True, f"{where} accepts the login and {sender.address} ({reply})")

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        verify_signature(body, _header(headers, SIGNATURE_HEADER), self.config.webhook_secret)

    def parse(self, body: bytes) -> InboundBatch:
        return parse_inbound(body)

    async def send(self, to: str, message: OutboundMessage, *, client_ref: str) -> str:
        """A conversation's message as an email from ``conversation_sender`` with the default
        subject: chatbot-style campaigns can run over email too. Without threading headers the
        recipient's client may not thread it; outreach actions carry their own subjects."""
        sender = self.config.conversation_sender
        if sender is None:
            raise PermanentChannelError(
                "email conversations reply through outreach actions: no conversation_sender "
                "mailbox is configured"
            )
        if message.buttons:
            raise PermanentChannelError("email has no reply buttons (max_buttons is 0)")
        action = OutreachAction(
            type=ACTION_TYPE,
            to=to,
            client_ref=client_ref,
            text=message.text,
            subject=self.config.conversation_subject,
        )
        result = await self.perform(action, sender)
        return str(result.provider_id)

    async def aclose(self) -> None:
        """Nothing to release: connections live for one send."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup that works for plain dicts as well as case-insensitive mappings."""
    return headers.get(name) or headers.get(name.lower())
