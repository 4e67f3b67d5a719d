"""action claims: a per-claim stamp fencing outcomes and recovery; uncertain actions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNSETTLED = "status IN ('running', 'uncertain')"


def upgrade() -> None:
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim", sa.String(32), nullable=True))
        batch_op.create_index(
            "ix_actions_unsettled",
            ["status", "claimed_at"],
            sqlite_where=sa.text(UNSETTLED),
            postgresql_where=sa.text(UNSETTLED),
        )


def downgrade() -> None:
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.drop_index("ix_actions_unsettled")
        batch_op.drop_column("claim")
