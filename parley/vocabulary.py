"""Parley's words: the statuses, kinds and types every layer speaks, in one place.

Most of these values are stored in the database (a conversation's ``status``, a message's
``direction`` and ``status``, an action's ``type``, ``channel``, ``queue`` and ``outcome``), so a
name or a value changed here is a migration. Plain Python: no I/O, no third-party library, and
nothing from the rest of ``parley``; storage, the campaign model, the channels and both wings
import it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final, Literal, get_args

# --- conversations -------------------------------------------------------------------------------


class Status(StrEnum):
    """Where a conversation is in its life. The row says it; Prefect's run state follows."""

    PENDING = "pending"  # stored, no run has taken it over yet
    RUNNING = "running"  # a run is executing its steps
    HOT = "hot"  # a run waits in-process for the next message (a live chat)
    SUSPENDED = "suspended"  # its run is suspended in Prefect: no process, no slot
    PAUSED = "paused"  # held by an operator or its campaign: stops at its next node, no process
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE: frozenset[Status] = frozenset(
    {Status.PENDING, Status.RUNNING, Status.HOT, Status.SUSPENDED, Status.PAUSED}
)
"""At most one active conversation per identity and contact (a partial unique index in
``parley.db.models``: a change here needs a migration)."""
TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
LIVE: frozenset[Status] = frozenset({Status.RUNNING, Status.HOT})
"""A process is working on the conversation right now (it renews the lease)."""


class WaitKind(StrEnum):
    """What a waiting conversation waits for (the row's ``waiting_for``)."""

    REPLY = "reply"  # the contact's next message
    TIMER = "timer"  # a point in time (a delay, a follow-up)
    ACTION = "action"  # an outreach action the identity's dispatcher will run
    OPERATOR = "operator"  # a person: a paused conversation, a task to complete


TRIGGER_STEP: Final = -1
"""``consumed_step`` of inbound messages that are no answer: the one that started a
conversation, and reactions (kept for the transcript only)."""


def step_ref(conversation_id: int, step: int) -> str:
    """Our id for step ``n``'s side effect; the provider reference and the http node's
    idempotency key derive from it. Lowercase letters, digits and dashes only. Stored: a
    message's ``client_ref``, an action's ``idempotency_key``."""
    return f"conv-{conversation_id}-step-{step}"


NODE_ID_MAX_LENGTH: Final = 100
"""A conversation stores its current node id; longer ids could not be stored."""


# --- messages ------------------------------------------------------------------------------------


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class InboundStatus(StrEnum):
    RECEIVED = "received"
    CONSUMED = "consumed"


class DeliveryStatus(StrEnum):
    """Where an outbound message stands. Only the last four come from providers."""

    PENDING = "pending"  # intent recorded, not handed to the provider yet
    SENDING = "sending"  # one execution claimed it; the provider may or may not have it
    DROPPED = "dropped"  # never sent on purpose: its conversation ended or moved on first
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


SENT_STATUSES = frozenset({DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ})
# Statuses only move forward: a late "sent" callback never overwrites "read".
DELIVERY_RANK: Mapping[DeliveryStatus, int] = {
    DeliveryStatus.PENDING: 0,
    DeliveryStatus.SENDING: 1,
    DeliveryStatus.DROPPED: 1,
    DeliveryStatus.SENT: 2,
    DeliveryStatus.DELIVERED: 3,
    DeliveryStatus.READ: 4,
    DeliveryStatus.FAILED: 5,
}

REPLY_ID_MAX_LENGTH: Final = 255
"""The longest reply-button id Parley stores; campaigns may not define longer ones."""


# --- outreach actions ----------------------------------------------------------------------------

ActionType = Literal[
    "email",
    "linkedin_message",
    "linkedin_connection",
    "linkedin_inmail",
    "linkedin_profile_visit",
    "whatsapp_template",
]
"""The action types an identity's dispatcher performs (a ``send`` node's ``action``)."""
ACTION_TYPES: Final[tuple[ActionType, ...]] = get_args(ActionType)

ChannelName = Literal["email", "linkedin", "whatsapp"]
CHANNEL_OF: Final[Mapping[ActionType, ChannelName]] = {
    "email": "email",
    "linkedin_message": "linkedin",
    "linkedin_connection": "linkedin",
    "linkedin_inmail": "linkedin",
    "linkedin_profile_visit": "linkedin",
    "whatsapp_template": "whatsapp",
}
"""The channel each action type goes out on (an action row's ``channel``)."""

ACTION_SENT: Final = "sent"
ACTION_SKIPPED: Final = "skipped"
ACTION_FAILED: Final = "failed"
"""An action's outcomes (its row's ``outcome`` once it is ``done``)."""
ACTION_TAKEN_OVER: Final = "taken_over"
"""Not an action's own outcome but its node's: a person's manual send stood in for it."""

# The queues an action waits in (its row's ``queue``): ``ready``; ``paused`` while its
# conversation (or its campaign) is paused; else parked while its account cannot work: the
# channel's name (``linkedin``, ``whatsapp``), ``email-{mailbox}`` or ``credits``.
READY: Final = "ready"
PAUSED: Final = "paused"
CREDITS: Final = "credits"
INMAIL: Final = "linkedin_inmail"
PARKED_TYPES: Final[dict[str, tuple[str, ...]]] = {CREDITS: (INMAIL,)}
"""Queues that hold only some action types of their channel: no credits stops InMails only."""


def channel_of_queue(queue: str) -> str:
    """The channel whose account a parked queue waits for (``credits``: the LinkedIn seat)."""
    if queue.startswith("email-"):
        return "email"
    return "linkedin" if queue == CREDITS else queue


# --- do not contact ------------------------------------------------------------------------------

SuppressionReason = Literal[
    "unsubscribed", "bounced", "complained", "manual", "replied: not interested"
]
"""Why an address is on the do-not-contact list (``parley.suppression``)."""
SUPPRESSION_REASONS: Final[tuple[SuppressionReason, ...]] = get_args(SuppressionReason)

AddressKind = Literal["email", "phone", "linkedin"]
"""What kind of address a suppression holds: each is normalised its own way."""
ADDRESS_KINDS: Final[tuple[AddressKind, ...]] = get_args(AddressKind)

SKIPPED_SUPPRESSED: Final = "skipped: suppressed"
"""The reason of an action (and of an import row) refused because its address is suppressed."""
