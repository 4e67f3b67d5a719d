"""campaign status: one row per campaign name (draft, active, paused, archived) replaces the
campaign_holds table (a hold was the status "paused")

Every campaign stored before becomes ``active`` (it could start conversations), a held one
``paused`` with its pause's time and reason.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_campaigns")),
    )
    op.execute(
        "INSERT INTO campaigns (name, status, changed_at, reason) "
        "SELECT name, 'paused', paused_at, reason FROM campaign_holds"
    )
    op.execute(
        "INSERT INTO campaigns (name, status, changed_at, reason) "
        "SELECT name, 'active', MIN(created_at), NULL FROM campaign_versions "
        "WHERE name NOT IN (SELECT name FROM campaign_holds) GROUP BY name"
    )
    op.drop_table("campaign_holds")


def downgrade() -> None:
    """A draft becomes a hold too (nothing of it may go out); an archived campaign becomes an
    ordinary one (the old schema cannot refuse its starts)."""
    op.create_table(
        "campaign_holds",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_campaign_holds")),
    )
    op.execute(
        "INSERT INTO campaign_holds (name, paused_at, reason) "
        "SELECT name, changed_at, reason FROM campaigns WHERE status IN ('paused', 'draft')"
    )
    op.drop_table("campaigns")
