"""durability: handovers, recoveries, per-row repair backoff, an index of unread messages

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNREAD = "direction = 'in' AND consumed_step IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("handed_over_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("recoveries", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("repair_after", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("repair_failures", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_messages_unread",
            ["conversation_id"],
            unique=False,
            sqlite_where=sa.text(UNREAD),
            postgresql_where=sa.text(UNREAD),
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_unread")
        batch_op.drop_column("claimed_at")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("repair_failures")
        batch_op.drop_column("repair_after")
        batch_op.drop_column("recoveries")
        batch_op.drop_column("handed_over_at")
