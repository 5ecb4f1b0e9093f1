"""Scoring: rule sets by version, score history, scored_at; engagement events record_no.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("scored_at", UTC))
        batch.add_column(sa.Column("scored_event_id", ID))
    with op.batch_alter_table("engagement_events") as batch:
        batch.add_column(sa.Column("record_no", sa.Integer))
    op.create_table(
        "rule_sets",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_table(
        "lead_scores",
        sa.Column("id", ID, sa.Identity(), primary_key=True),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("raw_points", sa.Float, nullable=False),
        sa.Column("temperature", sa.Text, nullable=False),
        sa.Column("decision", sa.Text, nullable=False),
        sa.Column("fired", sa.JSON),
        sa.Column("scored_at", UTC, nullable=False),
        sa.Column("flow_run_id", sa.Text),
    )
    op.create_index("ix_lead_scores_lead_id", "lead_scores", ["lead_id"])


def downgrade() -> None:
    op.drop_table("lead_scores")
    op.drop_table("rule_sets")
    with op.batch_alter_table("engagement_events") as batch:
        batch.drop_column("record_no")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("scored_event_id")
        batch.drop_column("scored_at")
