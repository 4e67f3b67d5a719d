"""actions.put_off: this action's not_before is the dispatcher's decision (hours, caps, spacing)

An operator's policy or timezone change re-decides exactly these at once; a retry's backoff
or a provider's Retry-After (not_before set by an error's recovery) is left as it is.

Revision ID: 0006
Revises: 0004 on this branch; main's 0005 (action_step) once merged
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("put_off", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Queued actions the dispatcher put off before this column existed said why in `reason`;
    # a retry's backoff keeps the attempt counted, a decision does not — the best mark there is.
    op.execute(
        "UPDATE actions SET put_off = TRUE WHERE status = 'queued' AND queue = 'ready' "
        "AND reason IS NOT NULL AND attempts = 0"
    )


def downgrade() -> None:
    with op.batch_alter_table("actions", schema=None) as batch_op:
        batch_op.drop_column("put_off")
