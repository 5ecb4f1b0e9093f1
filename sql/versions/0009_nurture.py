"""Nurture and recycling: cadence enrolments, the touches they sent, recycle bookkeeping.

- ``cadence_enrolments``: one row per time a lead entered a cadence (history is never
  deleted: a re-entry is a new row), with the next step and when it is due. At most one
  active enrolment per (lead, cadence), said by a partial unique index.
- ``cadence_touches``: one row per (enrolment, step) that was decided, unique, so a rerun,
  a retry or two overlapping ticks can never queue a step twice; the message itself goes
  through the outbox under the key ``touch:<enrolment>:<step>``.
- ``leads.recycle_count``: how often a lead came back from sales to nurture.
- ``assignments.avoid_until``: until when routing keeps the lead away from the rep who
  rejected it or lost it to an SLA (null: for good).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite allows it with a constant default): a batch rebuild of
    # `leads` would break the KPI views that read it.
    op.add_column(
        "leads",
        sa.Column("recycle_count", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.add_column("assignments", sa.Column("avoid_until", UTC))
    op.create_table(
        "cadence_enrolments",
        sa.Column("id", ID, sa.Identity(), primary_key=True),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("cadence", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("entry_no", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("due_at", UTC),
        sa.Column("enrolled_at", UTC, nullable=False),
        sa.Column("last_touch_at", UTC),
        sa.Column("deferrals", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text),
        sa.Column("ended_at", UTC),
        sa.Column("end_reason", sa.Text),
        sa.Column("updated_at", UTC, nullable=False),
    )
    op.create_index("ix_cadence_enrolments_due", "cadence_enrolments", ["status", "due_at"])
    op.create_index("ix_cadence_enrolments_lead", "cadence_enrolments", ["lead_id"])
    op.create_index(
        "uq_cadence_enrolments_active",
        "cadence_enrolments",
        ["lead_id", "cadence"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
    op.create_table(
        "cadence_touches",
        sa.Column("id", ID, sa.Identity(), primary_key=True),
        sa.Column("enrolment_id", ID, nullable=False),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("cadence", sa.Text, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("step_name", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("outbox_key", sa.Text),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("due_at", UTC, nullable=False),
        sa.Column("decided_at", UTC, nullable=False),
        sa.Column("flow_run_id", sa.Text),
        sa.UniqueConstraint("enrolment_id", "step", name="uq_cadence_touches_enrolment_step"),
    )
    op.create_index("ix_cadence_touches_lead_time", "cadence_touches", ["lead_id", "decided_at"])


def downgrade() -> None:
    op.drop_index("ix_cadence_touches_lead_time", "cadence_touches")
    op.drop_table("cadence_touches")
    op.drop_index("uq_cadence_enrolments_active", "cadence_enrolments")
    op.drop_index("ix_cadence_enrolments_lead", "cadence_enrolments")
    op.drop_index("ix_cadence_enrolments_due", "cadence_enrolments")
    op.drop_table("cadence_enrolments")
    op.drop_column("assignments", "avoid_until")
    op.drop_column("leads", "recycle_count")
