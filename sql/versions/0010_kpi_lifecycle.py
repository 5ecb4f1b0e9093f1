"""KPI views for the lifecycle after routing: SLA compliance by policy and rep, and each
lead's first human touch (speed to lead ends there).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from alembic import op

from sql import create_views, drop_views

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

VIEWS = ("kpi_sla_compliance", "kpi_first_touch")


def upgrade() -> None:
    create_views(op, VIEWS)


def downgrade() -> None:
    drop_views(op, VIEWS)
