"""Routing: reps as the routing rules describe them, round-robin state, assignments, outbox.

- ``reps`` gains ``code`` (the rules file's rep id: people write ``ava-ng``, foreign keys keep
  the numeric ``id``), manager, pools, territories, industries, segments, weight, capacity
  (max_open, max_new_per_day), working_hours, out_of_office and country (holidays).
- ``routing_state``: per (pool, rep code) the weighted round robin's counter, shared by
  concurrent runs and kept across restarts.
- ``assignments``: every routing decision, with the reason and the candidates considered;
  ``released_at`` when a lead leaves its owner (recycled, reassigned).
- ``outbox``: every message leaving leadflow, written with the decision that caused it.

Revision ID: 0004
Revises: 0006
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0006"  # 0006 (claims) landed first; revision ids are names, not an order
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("reps") as batch:
        batch.add_column(sa.Column("code", sa.Text))
        batch.add_column(sa.Column("manager", sa.Text))
        batch.add_column(sa.Column("pools", JSONDoc))
        batch.add_column(sa.Column("territories", JSONDoc))
        batch.add_column(sa.Column("industries", JSONDoc))
        batch.add_column(sa.Column("segments", JSONDoc))
        batch.add_column(sa.Column("weight", sa.Float, nullable=False, server_default=sa.text("1")))
        batch.add_column(sa.Column("max_open", sa.Integer))
        batch.add_column(sa.Column("max_new_per_day", sa.Integer))
        batch.add_column(sa.Column("working_hours", JSONDoc))
        batch.add_column(sa.Column("out_of_office", JSONDoc))
        batch.add_column(sa.Column("country", sa.Text))
    op.create_index("uq_reps_code", "reps", ["code"], unique=True)
    op.create_table(
        "routing_state",
        sa.Column("pool", sa.Text, primary_key=True),
        sa.Column("rep", sa.Text, primary_key=True),
        sa.Column("served", sa.Float, nullable=False),
        sa.Column("available", sa.Boolean, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
    )
    op.create_table(
        "assignments",
        sa.Column("id", ID, sa.Identity(), primary_key=True),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("rep_id", ID, sa.ForeignKey("reps.id")),
        sa.Column("rep_code", sa.Text, nullable=False),
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("pool", sa.Text),
        sa.Column("rule", sa.Text),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("candidates", sa.JSON),
        sa.Column("assigned_at", UTC, nullable=False),
        sa.Column("flow_run_id", sa.Text),
        sa.Column("released_at", UTC),
        sa.Column("released_reason", sa.Text),
    )
    op.create_index("ix_assignments_lead_id", "assignments", ["lead_id"])
    op.create_index("ix_assignments_rep_assigned", "assignments", ["rep_code", "assigned_at"])
    op.create_table(
        "outbox",
        sa.Column("id", ID, sa.Identity(), primary_key=True),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("lead_id", ID),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("body", sa.Text),
        sa.Column("payload", sa.JSON),
        sa.Column("attachments", sa.JSON),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", UTC, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("sent_at", UTC),
        sa.Column("flow_run_id", sa.Text),
        sa.UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
    )
    op.create_index("ix_outbox_status_due", "outbox", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("assignments")
    op.drop_table("routing_state")
    op.drop_index("uq_reps_code", table_name="reps")
    with op.batch_alter_table("reps") as batch:
        for name in (
            "country",
            "out_of_office",
            "working_hours",
            "max_new_per_day",
            "max_open",
            "weight",
            "segments",
            "industries",
            "territories",
            "pools",
            "manager",
            "code",
        ):
            batch.drop_column(name)
