"""lead imports: the import and its rows, and the import that created a conversation

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_ROW = "outcome IS NULL"


def upgrade() -> None:
    op.create_table(
        "lead_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign", sa.String(100), nullable=False),
        sa.Column("identity_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["identity_id"], ["identities.id"], name="fk_lead_imports_identity_id_identities"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_lead_imports"),
    )
    op.create_index("ix_lead_imports_digest", "lead_imports", ["digest", "campaign", "identity_id"])
    op.create_table(
        "lead_import_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("row_number", sa.Integer(), nullable=False),
        sa.Column("lead_key", sa.String(300), nullable=True),
        sa.Column("lead", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("conversation_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["import_id"], ["lead_imports.id"], name="fk_lead_import_rows_import_id_lead_imports"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_lead_import_rows"),
        sa.UniqueConstraint("import_id", "row_number", name="uq_lead_import_rows_import_id"),
    )
    op.create_index(
        "ix_lead_import_rows_open",
        "lead_import_rows",
        ["import_id", "row_number"],
        sqlite_where=sa.text(OPEN_ROW),
        postgresql_where=sa.text(OPEN_ROW),
    )
    op.create_index("ix_lead_import_rows_lead", "lead_import_rows", ["lead_key", "outcome"])
    # A plain ADD COLUMN, no batch: SQLite's batch mode copies and drops ``conversations``,
    # which the rows of ``actions``, ``messages``... reference. No foreign key for the same
    # reason (SQLite cannot add one to an existing table); the import id is only read.
    op.add_column("conversations", sa.Column("import_id", sa.Integer(), nullable=True))
    op.create_index("ix_conversations_import_id", "conversations", ["import_id"])


def downgrade() -> None:
    op.drop_index("ix_conversations_import_id", table_name="conversations")
    op.drop_column("conversations", "import_id")  # SQLite >= 3.35 drops it in place, no batch
    op.drop_index("ix_lead_import_rows_lead", table_name="lead_import_rows")
    op.drop_index("ix_lead_import_rows_open", table_name="lead_import_rows")
    op.drop_table("lead_import_rows")
    op.drop_index("ix_lead_imports_digest", table_name="lead_imports")
    op.drop_table("lead_imports")
