"""Enrichment: derived lead fields, firmographics, account match, provider cache.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
UTC = sa.DateTime(timezone=True)

LEAD_COLUMNS = (
    ("email_type", sa.Text),
    ("domain", sa.Text),
    ("seniority", sa.Text),
    ("department", sa.Text),
    ("phone_valid", sa.Boolean),
    ("phone_country", sa.Text),
    ("region", sa.Text),
    ("timezone", sa.Text),
    ("company_clean", sa.Text),
    ("industry", sa.Text),
    ("employees", sa.Integer),
    ("revenue", sa.Float),
    ("firmographics", sa.Text),
    ("account_match", sa.Text),
    ("account_owner_rep_id", ID),
    ("enrichment_notes", JSONDoc),
    ("enriched_at", UTC),
    ("enrich_attempted_at", UTC),
)


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        for name, kind in LEAD_COLUMNS:
            batch.add_column(sa.Column(name, kind))
    op.create_table(
        "firmographics_cache",
        sa.Column("provider", sa.Text, primary_key=True),
        sa.Column("domain", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("industry", sa.Text),
        sa.Column("employees", sa.Integer),
        sa.Column("revenue", sa.Float),
        sa.Column("country", sa.Text),
        sa.Column("notes", JSONDoc),
        sa.Column("fetched_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("firmographics_cache")
    with op.batch_alter_table("leads") as batch:
        for name, _ in reversed(LEAD_COLUMNS):
            batch.drop_column(name)
