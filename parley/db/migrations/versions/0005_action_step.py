"""action_step: the step whose outreach action a conversation waits for

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("action_step", sa.Integer(), nullable=True))
    _backfill()


def _backfill() -> None:
    """Rows already waiting for an action wait for the last one their steps queued (its key is
    ``conv-{id}-step-{n}``); without the mark its outcome would no longer reach them."""
    bind = op.get_bind()
    waiting = bind.execute(
        sa.text("SELECT id FROM conversations WHERE waiting_for = 'action'")
    ).scalars()
    for conversation_id in list(waiting):
        key = bind.execute(
            sa.text(
                "SELECT idempotency_key FROM actions WHERE conversation_id = :c "
                "AND idempotency_key LIKE :prefix ORDER BY id DESC LIMIT 1"
            ),
            {"c": conversation_id, "prefix": f"conv-{conversation_id}-step-%"},
        ).scalar()
        if key is not None:
            bind.execute(
                sa.text("UPDATE conversations SET action_step = :s WHERE id = :c"),
                {"s": int(str(key).rsplit("-", 1)[1]), "c": conversation_id},
            )


def downgrade() -> None:
    # Not batch mode: on SQLite it copies the table and drops the old one, which the rows
    # pointing at conversations (messages, actions) refuse. Both backends drop a column in place.
    op.execute("ALTER TABLE conversations DROP COLUMN action_step")
