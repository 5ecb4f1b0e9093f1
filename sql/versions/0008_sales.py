"""Sales: activities and dispositions, SLA timers and breaches.

- ``activities``: calls, emails, meetings, accept/reject/qualify/won/lost/not now/no response,
  one row per activity however often it is received (``activity_key``).
- ``sla_timers``: one clock per (assignment, policy), with its warning, due and escalation
  instants precomputed in the owner's business time, so a check is a few set-based UPDATEs.
- ``assignments.sla_stage``: which of an assignment's timers were started (a check looks
  at each assignment once per stage, not at every check).
- ``sla_breaches``: each breach once per level (unique), with the action taken and why.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("assignments") as batch:
        batch.add_column(sa.Column("sla_stage", sa.Text))
    op.create_table(
        "activities",
        sa.Column("id", ID, sa.Identity(), primary_key=True),
        sa.Column("lead_id", ID, sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("rep_id", ID, sa.ForeignKey("reps.id")),
        sa.Column("activity_type", sa.Text, nullable=False),
        sa.Column("occurred_at", UTC, nullable=False),
        sa.Column("automated", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("reason", sa.Text),
        sa.Column("properties", JSONDoc),
        sa.Column("source", sa.Text),
        sa.Column("activity_key", sa.Text, nullable=False, unique=True),
        sa.Column("batch_id", ID),
        sa.Column("record_no", sa.Integer),
        sa.Column("recorded_at", UTC, nullable=False),
    )
    op.create_index("ix_activities_lead_time", "activities", ["lead_id", "occurred_at"])
    op.create_table(
        "sla_timers",
        sa.Column("id", ID, sa.Identity(), primary_key=True),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("assignment_id", ID, nullable=False),
        sa.Column("rep_id", ID),
        sa.Column("policy", sa.Text, nullable=False),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("warn_at", UTC, nullable=False),
        sa.Column("due_at", UTC, nullable=False),
        sa.Column("escalate_at", UTC),
        sa.Column("met_at", UTC),
        sa.Column("met_by", ID),
        sa.Column("business_minutes", sa.Float),
        sa.Column("warned_at", UTC),
        sa.Column("level", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("closed_at", UTC),
        sa.Column("closed_reason", sa.Text),
        sa.Column("created_at", UTC, nullable=False),
        sa.UniqueConstraint("assignment_id", "policy", name="uq_sla_timers_assignment_policy"),
    )
    op.create_index("ix_sla_timers_open_due", "sla_timers", ["closed_at", "due_at"])
    op.create_index("ix_sla_timers_lead", "sla_timers", ["lead_id"])
    op.create_table(
        "sla_breaches",
        sa.Column("id", ID, sa.Identity(), primary_key=True),
        sa.Column("timer_id", ID, sa.ForeignKey("sla_timers.id"), nullable=False),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("rep_id", ID),
        sa.Column("policy", sa.Text, nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("new_rep_id", ID),
        sa.Column("due_at", UTC, nullable=False),
        sa.Column("recorded_at", UTC, nullable=False),
        sa.Column("flow_run_id", sa.Text),
        sa.UniqueConstraint("timer_id", "level", name="uq_sla_breaches_timer_level"),
    )


def downgrade() -> None:
    op.drop_table("sla_breaches")
    op.drop_table("sla_timers")
    op.drop_index("ix_activities_lead_time", "activities")
    op.drop_table("activities")
    with op.batch_alter_table("assignments") as batch:
        batch.drop_column("sla_stage")
