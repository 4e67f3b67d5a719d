"""suppressions: the do-not-contact list, installation-wide and per identity

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INSTALLATION_WIDE = "identity_id IS NULL"
PER_IDENTITY = "identity_id IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identity_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_suppressions_identity_id_identities"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_suppressions")),
    )
    op.create_index(
        "uq_suppressions_installation",
        "suppressions",
        ["kind", "address"],
        unique=True,
        sqlite_where=sa.text(INSTALLATION_WIDE),
        postgresql_where=sa.text(INSTALLATION_WIDE),
    )
    op.create_index(
        "uq_suppressions_identity",
        "suppressions",
        ["identity_id", "kind", "address"],
        unique=True,
        sqlite_where=sa.text(PER_IDENTITY),
        postgresql_where=sa.text(PER_IDENTITY),
    )
    op.create_index("ix_suppressions_address", "suppressions", ["kind", "address"])


def downgrade() -> None:
    op.drop_index("ix_suppressions_address", table_name="suppressions")
    op.drop_index("uq_suppressions_identity", table_name="suppressions")
    op.drop_index("uq_suppressions_installation", table_name="suppressions")
    op.drop_table("suppressions")
