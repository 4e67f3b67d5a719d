"""SQLAlchemy models: Parley's own state, kept apart from Prefect's database.

The conversation row is the compact state a resumed run loads (docs/architecture.md, durability
rule 2); full transcripts live in ``messages`` and never travel through Prefect (rule 5).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from parley.vocabulary import ACTIVE, NODE_ID_MAX_LENGTH, REPLY_ID_MAX_LENGTH, Status

# The partial unique index of signal-with-start; a change to ACTIVE needs a migration.
_ACTIVE_SQL = "status IN ({})".format(", ".join(f"'{s.value}'" for s in sorted(ACTIVE)))
_UNREAD_SQL = "direction = 'in' AND consumed_step IS NULL"
STATUS_TYPE = Enum(
    Status,
    native_enum=False,
    create_constraint=False,
    length=16,
    values_callable=lambda statuses: [status.value for status in statuses],
)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps are UTC-aware on both backends (SQLite would hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {  # noqa: RUF012  (SQLAlchemy reads it as a class attribute)
        datetime: UtcDateTime(),
        dict[str, Any]: JSON,
    }


class Identity(Base):
    """A sender account of ours: a WhatsApp business phone number, a mailbox, a LinkedIn seat."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    # {"working_hours": {...}, "limits": {...}}: see parley.outreach.identities.IdentityPolicy.
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # Provider settings of this sender (SMTP server and login, the LinkedIn seat's account id).
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # Parked queues ("linkedin", "email-{address}", "credits") -> {"reason", "since"}.
    parked: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # What providers told us: "channel/action_type" -> ISO instant before which nothing goes.
    blocked_until: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    flagged: Mapped[str | None] = mapped_column(Text)  # e.g. no working hours within 7 days
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Contact(Base):
    """The person on the other side, identified by their address on one channel."""

    __tablename__ = "contacts"
    __table_args__ = (UniqueConstraint("channel", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    # What edge conditions may compare (``{field: plan, equals: pro}``) and a ``timezone``;
    # set by the ``field_changed`` signal, never by the contact's own messages.
    fields: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CampaignVersion(Base):
    """One immutable version of a campaign graph; conversations pin the version they started on."""

    __tablename__ = "campaign_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        UniqueConstraint("name", "digest", name="uq_campaign_versions_name_digest"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Conversation(Base):
    """The compact, durable state of one conversation (one Prefect flow run)."""

    __tablename__ = "conversations"
    __table_args__ = (
        # signal-with-start: at most one active conversation per identity and contact.
        Index(
            "uq_conversations_active_pair",
            "identity_id",
            "contact_id",
            unique=True,
            sqlite_where=text(_ACTIVE_SQL),
            postgresql_where=text(_ACTIVE_SQL),
        ),
        Index("ix_conversations_status", "status"),
        Index("ix_conversations_wake_at", "wake_at"),
        Index("ix_conversations_import_id", "import_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Globally unique: names the conversation's Prefect flow run (idempotency key) so a reset
    # database can never be mistaken for an old one that reused the same integer ids.
    uid: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuid4()))
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    campaign_version_id: Mapped[int] = mapped_column(ForeignKey("campaign_versions.id"))
    status: Mapped[Status] = mapped_column(STATUS_TYPE, default=Status.PENDING)
    current_node: Mapped[str] = mapped_column(String(NODE_ID_MAX_LENGTH))
    # When the conversation entered ``current_node`` (on the driven clock: delays and timeouts
    # count from here), whether the node's own work (its send, prompt, call) is done, and
    # whether a timer brought it here: a follow-up is not sent once the contact has replied.
    node_entered_at: Mapped[datetime | None]
    node_done: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    follow_up: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    task_result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The step whose outreach action the conversation last queued (its key is that step's
    # reference): while it waits for an action, only that action's outcome is for it — not
    # one queued by an earlier visit of the same node.
    action_step: Mapped[int | None] = mapped_column(Integer)
    paused_by: Mapped[str | None] = mapped_column(String(16))  # "operator" or "campaign"
    # An operator resumed it, completed its task or signalled it: its run is owed a resume
    # (the API does it at once; the dispatcher does it if that did not get through).
    wake_requested_at: Mapped[datetime | None]
    step: Mapped[int] = mapped_column(Integer, default=0)
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    waiting_for: Mapped[str | None] = mapped_column(String(32))
    waiting_since: Mapped[datetime | None]
    wake_at: Mapped[datetime | None]
    sleeps: Mapped[int] = mapped_column(Integer, default=0)
    flow_run_id: Mapped[str | None] = mapped_column(String(36))
    # A live run renews its lease; an expired one means its process is gone.
    lease_until: Mapped[datetime | None]
    # When a start, resume or reschedule was issued: the run must take over within a lease.
    handed_over_at: Mapped[datetime | None]
    recoveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The dispatcher's backoff for a row whose repair keeps failing (per row, never blocking).
    repair_after: Mapped[datetime | None]
    repair_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    # The lead import that created it: its first run is started by the dispatcher, paced
    # (``PARLEY_RUN_STARTS_PER_SECOND``), not at once by whoever created it.
    import_id: Mapped[int | None] = mapped_column(Integer)  # lead_imports.id (no FK: 0010)

    # Optimistic locking: every UPDATE checks and bumps ``version`` (StaleDataError on conflict).
    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012


class Message(Base):
    """One message in or out. Inbound rows are the inbox; outbound rows are send intents first."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_inbox", "conversation_id", "direction", "consumed_step", "id"),
        Index(
            "ix_messages_unread",
            "conversation_id",
            sqlite_where=text(_UNREAD_SQL),
            postgresql_where=text(_UNREAD_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    direction: Mapped[str] = mapped_column(String(3))
    provider_message_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    client_ref: Mapped[str | None] = mapped_column(String(100), unique=True)
    type: Mapped[str] = mapped_column(String(32), default="text")
    text: Mapped[str | None] = mapped_column(Text)
    reply_id: Mapped[str | None] = mapped_column(String(REPLY_ID_MAX_LENGTH))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16))
    step: Mapped[int | None] = mapped_column(Integer)
    consumed_step: Mapped[int | None] = mapped_column(Integer)
    # When an execution claimed this intent for sending (pending -> sending); the claim is
    # taken over only by a compare-and-set on this value.
    claimed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class NodeVisit(Base):
    """One stay of a conversation at one node: the step history operators read and the funnel
    counts. Written when the conversation enters and leaves a node, never per message, so it
    grows with the graph walked, not with the transcript."""

    __tablename__ = "node_visits"
    __table_args__ = (
        Index("ix_node_visits_conversation", "conversation_id", "id"),
        Index("ix_node_visits_funnel", "campaign_version_id", "node"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    campaign_version_id: Mapped[int] = mapped_column(ForeignKey("campaign_versions.id"))
    node: Mapped[str] = mapped_column(String(NODE_ID_MAX_LENGTH))
    entered_at: Mapped[datetime]
    left_at: Mapped[datetime | None]
    # How the visit ended: "left" (an edge), the conversation's end status there, or
    # "migrated" (moved to another campaign version: ``parley.conversation.migration``).
    outcome: Mapped[str | None] = mapped_column(String(16))
    next_node: Mapped[str | None] = mapped_column(String(NODE_ID_MAX_LENGTH))
    steps: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)


class CampaignState(Base):
    """A campaign's status, one row per campaign name (every version shares it): whether its
    conversations go on (``active``), wait at the pause gate (``draft``, ``paused``), or no new
    ones are accepted (``archived``). ``reason`` says why, for the other operators."""

    __tablename__ = "campaigns"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)


_READY_SQL = "status = 'queued' AND queue = 'ready'"
_UNSETTLED_SQL = "status IN ('running', 'uncertain')"


class Action(Base):
    """One outreach action of an identity (an email, a LinkedIn request, a WhatsApp template),
    queued in the database — never in memory — until its identity's dispatcher may perform it.
    Small payload: the rendered text and pointers, never a transcript."""

    __tablename__ = "actions"
    __table_args__ = (
        Index(
            "ix_actions_ready",
            "identity_id",
            "not_before",
            "id",
            sqlite_where=text(_READY_SQL),
            postgresql_where=text(_READY_SQL),
        ),
        Index("ix_actions_history", "identity_id", "type", "performed_at"),
        Index(
            "ix_actions_unsettled",
            "status",
            "claimed_at",
            sqlite_where=text(_UNSETTLED_SQL),
            postgresql_where=text(_UNSETTLED_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id"))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))
    channel: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # "ready", or parked: "linkedin" (session expired), "email-{address}", "credits".
    queue: Mapped[str] = mapped_column(String(300), default="ready", server_default="ready")
    not_before: Mapped[datetime]
    # not_before is the dispatcher's decision (hours, caps, spacing), not an error's backoff:
    # an operator's policy change re-decides it at once
    # (parley.outreach.identities.update_identity).
    put_off: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # queued -> running -> done; the outcome says how it ended: sent, skipped, failed.
    # running -> uncertain: the provider may have it and cannot be asked to deduplicate
    # (WhatsApp, SMTP); it waits until ``not_before`` for the provider's status callback.
    status: Mapped[str] = mapped_column(String(16), default="queued", server_default="queued")
    outcome: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)  # why it waits, was skipped or failed
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    seen_inbound_id: Mapped[int | None] = mapped_column(Integer)  # the freshness check's mark
    provider_id: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime | None]
    # A token per claim: an outcome or a recovery is written only under the claim it saw.
    claim: Mapped[str | None] = mapped_column(String(32))
    performed_at: Mapped[datetime | None]  # on the driven clock: what limits count
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEvent(Base):
    """What a provider sent that we recorded but did not act on (other fields, unknown types)."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LeadImport(Base):
    """One import of leads (a CSV or JSONL file, or a REST body) into a campaign for an identity.
    Its rows are stored before any conversation is created, so an import interrupted between
    batches is finished by importing the same content again (same ``digest``)."""

    __tablename__ = "lead_imports"
    __table_args__ = (Index("ix_lead_imports_digest", "digest", "campaign", "identity_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(100))
    identity_id: Mapped[int] = mapped_column(ForeignKey("identities.id"))
    source: Mapped[str] = mapped_column(String(255))  # the file's name, "rest", a node
    digest: Mapped[str] = mapped_column(String(64))  # of the rows, the campaign, the identity
    status: Mapped[str] = mapped_column(String(16), default="importing")  # importing -> done
    total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


_OPEN_ROW_SQL = "outcome IS NULL"


class LeadImportRow(Base):
    """One lead of an import: what the file said (normalised), and what became of it:
    ``started``, ``skipped`` or ``invalid`` with the reason; no outcome yet = not done."""

    __tablename__ = "lead_import_rows"
    __table_args__ = (
        UniqueConstraint("import_id", "row_number"),
        Index(
            "ix_lead_import_rows_open",
            "import_id",
            "row_number",
            sqlite_where=text(_OPEN_ROW_SQL),
            postgresql_where=text(_OPEN_ROW_SQL),
        ),
        Index("ix_lead_import_rows_lead", "lead_key", "outcome"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("lead_imports.id"))
    row_number: Mapped[int] = mapped_column(Integer)  # 1 = the first lead (CSV: after the header)
    lead_key: Mapped[str | None] = mapped_column(String(300))  # "channel:address"
    lead: Mapped[dict[str, Any]] = mapped_column(default=dict)  # channel, address, name, ...
    outcome: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    conversation_id: Mapped[int | None] = mapped_column(Integer)


_INSTALLATION_WIDE_SQL = "identity_id IS NULL"
_PER_IDENTITY_SQL = "identity_id IS NOT NULL"


class Suppression(Base):
    """An address nobody (``identity_id`` NULL) or one identity may contact any more: the
    do-not-contact list. ``address`` is normalised per ``kind`` (``parley.suppression``), so
    ``Ana@Example.com`` and ``ana@example.com`` are one entry."""

    __tablename__ = "suppressions"
    __table_args__ = (
        # One entry per scope, kind and address. NULLs are distinct in a unique constraint, so
        # the installation-wide scope has its own partial index.
        Index(
            "uq_suppressions_installation",
            "kind",
            "address",
            unique=True,
            sqlite_where=text(_INSTALLATION_WIDE_SQL),
            postgresql_where=text(_INSTALLATION_WIDE_SQL),
        ),
        Index(
            "uq_suppressions_identity",
            "identity_id",
            "kind",
            "address",
            unique=True,
            sqlite_where=text(_PER_IDENTITY_SQL),
            postgresql_where=text(_PER_IDENTITY_SQL),
        ),
        Index("ix_suppressions_address", "kind", "address"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int | None] = mapped_column(ForeignKey("identities.id"))
    kind: Mapped[str] = mapped_column(String(16))  # parley.vocabulary.AddressKind
    address: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(32))  # parley.vocabulary.SuppressionReason
    note: Mapped[str | None] = mapped_column(Text)
    # Who or what put it there: "cli", "api", "import", "inbound: STOP", "email: bounced".
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
