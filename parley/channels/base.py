"""The channel contract: what Parley needs from any provider, in channel-neutral types.

The inbox, the step executor and the campaign model speak only these types. A provider lives in
a folder of its own (``channels/whatsapp/``) that translates its wire format to and from them, so
adding a channel means adding a folder, a line in ``catalog`` and a webhook route — never
touching the inbox or the executor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from parley.vocabulary import SuppressionReason

JSONDict = dict[str, Any]
"""A decoded JSON object, as providers send it and as we store payloads."""


class InboundRole(StrEnum):
    """What an inbound message can do in a conversation."""

    ANSWER = "answer"  # a person's message: it can answer a question or interrupt a wait
    TRANSCRIPT = "transcript"  # kept for the record only (e.g. a reaction emoji)
    UNSUPPORTED = "unsupported"  # a type we cannot read; recorded as a webhook event


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a channel can carry; the campaign validator checks graphs against it."""

    max_buttons: int  # reply buttons per message; 0 means the channel has none
    max_button_title: int
    max_button_id: int
    max_text_length: int
    echoes_reference: bool  # status callbacks carry our client_ref, so sends can be reconciled


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message a contact sent to one of our identities."""

    channel: str
    provider_message_id: str
    identity_address: str  # our account it was sent to (a WhatsApp phone number id, a mailbox)
    contact_address: str
    contact_name: str | None
    type: str
    role: InboundRole
    text: str | None  # what a campaign reads as the contact's answer
    reply_id: str | None  # id of a tapped reply button
    context_message_id: str | None  # the message of ours it replies to, when the channel says
    timestamp: datetime
    raw: JSONDict = field(hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """The fate of a message we sent; ``client_ref`` lets an uncertain send be reconciled."""

    channel: str
    provider_message_id: str
    identity_address: str
    status: str
    recipient: str | None
    timestamp: datetime
    client_ref: str | None
    errors: list[JSONDict] = field(default_factory=list, hash=False, compare=False)
    # What the status means for the do-not-contact list: ``bounced`` (a hard bounce: the
    # address does not exist) or ``complained`` (the recipient reported it as spam); the
    # recipient is suppressed and its sequence ends. None: nothing (a soft bounce, a delivery).
    suppresses: SuppressionReason | None = None

    @property
    def error_summary(self) -> str | None:
        parts = [f"{e.get('code')}: {e.get('title') or e.get('message')}" for e in self.errors]
        return "; ".join(parts) or None


@dataclass(frozen=True, slots=True)
class InboundBatch:
    """Everything one webhook POST carried; ``ignored`` explains each part skipped on purpose."""

    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    ignored: list[JSONDict] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What a step sends: a text, optionally with reply buttons as (id, title) pairs."""

    text: str
    buttons: tuple[tuple[str, str], ...] = ()

    def payload(self) -> JSONDict:
        """The small record stored with the send intent (no transcripts: durability rule 5,
        docs/architecture.md)."""
        if self.buttons:
            return {"type": "interactive", "buttons": [list(b) for b in self.buttons]}
        return {"type": "text"}


class Channel(Protocol):
    """A provider as Parley uses it. Implementations raise ``parley.errors`` kinds only."""

    name: str
    capabilities: Capabilities

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise ``InvalidSignature`` unless the provider signed ``body``."""

    def parse(self, body: bytes) -> InboundBatch:
        """Read a whole webhook body; raise ``MalformedPayload`` before anything is stored."""

    async def send(self, to: str, message: OutboundMessage, *, client_ref: str) -> str:
        """Send and return the provider's message id; ``client_ref`` travels where it can."""

    async def aclose(self) -> None:
        """Release connections."""


@runtime_checkable
class SendsAs(Protocol):
    """A channel whose conversation messages can go out from a given account (the identity's
    own WhatsApp number), not only from the one it is configured with."""

    async def send_as(
        self, sender: SenderIdentity, to: str, message: OutboundMessage, *, client_ref: str
    ) -> str:
        """``Channel.send`` from ``sender``'s account."""


# --- outreach: actions an identity performs, one at a time, under its limits -----------------


@dataclass(frozen=True, slots=True)
class SenderIdentity:
    """The account an action goes out from, with its provider settings (secrets resolved):
    a mailbox's SMTP server and login, a LinkedIn seat's gateway account id."""

    channel: str
    address: str
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class OutreachAction:
    """One business-initiated action: an email, a LinkedIn message, connection request, InMail
    or profile visit, a WhatsApp template. ``client_ref`` is our id for it (idempotency key,
    Message-ID, template callback data), stable across retries."""

    type: str
    to: str
    client_ref: str
    text: str | None = None
    subject: str | None = None
    template: str | None = None  # WhatsApp template name
    parameters: tuple[str, ...] = ()  # template body parameters, in order
    file: str | None = None  # LinkedIn attachment / voice message: the URL the gateway fetches
    post: str | None = None  # LinkedIn like: the post's URL


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What the provider said it did: its id for the thing sent, and small details."""

    provider_id: str | None
    detail: JSONDict = field(default_factory=dict, hash=False, compare=False)


class OutreachChannel(Protocol):
    """A provider that performs outreach actions for an identity. Implementations raise
    ``parley.errors`` kinds only: ``IdentityExpired`` (park the channel), ``RateLimited``
    (wait for ``retry_after``), ``TransientChannelError`` (retry; the call may have happened
    when ``http_status`` is None or >= 500), ``NotConnected``, ``CreditsExhausted``,
    ``Undeliverable`` (complete the conversation), ``PermanentChannelError``."""

    name: str
    action_types: frozenset[str]

    async def perform(self, action: OutreachAction, sender: SenderIdentity) -> ActionResult:
        """Do ``action`` once; a retry with the same ``client_ref`` must not do it twice where
        the provider lets us say so."""

    async def aclose(self) -> None:
        """Release connections."""


@dataclass(frozen=True, slots=True)
class SenderHealth:
    """What a provider says of a sender's account now, asked without performing anything:
    whether it works (``detail`` says why not), and the InMail credits a LinkedIn seat has
    left when the provider tells."""

    healthy: bool
    detail: str
    inmail_credits: int | None = None


@runtime_checkable
class HealthChecked(Protocol):
    """A provider that can tell whether a sender's account works again, so a parked queue
    unparks by itself (``parley.outreach.parked``). Raises ``parley.errors`` kinds like ``perform``:
    ``IdentityExpired`` is an unhealthy answer, a ``TransientChannelError`` no answer."""

    async def check_sender(self, sender: SenderIdentity) -> SenderHealth:
        """Ask the provider about ``sender``'s account (a status call, a login): no action."""
