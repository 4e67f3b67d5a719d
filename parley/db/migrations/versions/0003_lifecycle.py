"""lifecycle: paused conversations and campaigns, node visits, timers' state, contact fields

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_ACTIVE = "status IN ('pending', 'running', 'hot', 'suspended')"
NEW_ACTIVE = "status IN ('hot', 'paused', 'pending', 'running', 'suspended')"


def _active_pair(batch_op: object, where: str) -> None:
    batch_op.create_index(  # type: ignore[attr-defined]
        "uq_conversations_active_pair",
        ["identity_id", "contact_id"],
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("node_entered_at", sa.DateTime(timezone=True)))
        batch_op.add_column(
            sa.Column("node_done", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("follow_up", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("task_result", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("paused_by", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("wake_requested_at", sa.DateTime(timezone=True)))
        batch_op.drop_index("uq_conversations_active_pair")
        _active_pair(batch_op, NEW_ACTIVE)
        batch_op.create_index("ix_conversations_wake_at", ["wake_at"], unique=False)
    # Rows written before this revision: a wait means the node's prompt already went out.
    op.execute("UPDATE conversations SET node_done = TRUE WHERE waiting_for IS NOT NULL")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fields", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "node_visits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=False),
        sa.Column("campaign_version_id", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(100), nullable=False),
        sa.Column("entered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("next_node", sa.String(100), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_node_visits_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_version_id"],
            ["campaign_versions.id"],
            name=op.f("fk_node_visits_campaign_version_id_campaign_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_visits")),
    )
    with op.batch_alter_table("node_visits", schema=None) as batch_op:
        batch_op.create_index("ix_node_visits_conversation", ["conversation_id", "id"])
        batch_op.create_index("ix_node_visits_funnel", ["campaign_version_id", "node"])
    op.create_table(
        "campaign_holds",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_campaign_holds")),
    )


def downgrade() -> None:
    op.drop_table("campaign_holds")
    with op.batch_alter_table("node_visits", schema=None) as batch_op:
        batch_op.drop_index("ix_node_visits_funnel")
        batch_op.drop_index("ix_node_visits_conversation")
    op.drop_table("node_visits")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("fields")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_wake_at")
        batch_op.drop_index("uq_conversations_active_pair")
        _active_pair(batch_op, OLD_ACTIVE)
        batch_op.drop_column("wake_requested_at")
        batch_op.drop_column("paused_by")
        batch_op.drop_column("task_result")
        batch_op.drop_column("follow_up")
        batch_op.drop_column("node_done")
        batch_op.drop_column("node_entered_at")
