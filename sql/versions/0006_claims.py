"""Claims: one row per leased batch, renewed by a heartbeat; an index on leads.claimed_by.

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("token", sa.Text, primary_key=True),
        sa.Column("hop", sa.Text, nullable=False),
        sa.Column("holder", sa.Text, nullable=False),
        sa.Column("flow_run_id", sa.Text),
        sa.Column("leads", sa.Integer, nullable=False),
        sa.Column("claimed_at", UTC, nullable=False),
        sa.Column("renewed_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
    )
    op.create_index(
        "ix_leads_claimed_by",
        "leads",
        ["claimed_by"],
        postgresql_where=sa.text("claimed_by IS NOT NULL"),
        sqlite_where=sa.text("claimed_by IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_leads_claimed_by", table_name="leads")
    op.drop_table("claims")
