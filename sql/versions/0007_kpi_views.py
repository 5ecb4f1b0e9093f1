"""KPI views: the funnel, speed to lead, source performance, recycling, waiting work, deals.

The views' SQL lives in ``sql/views/<name>.sql`` (one file each, portable between SQLite and
PostgreSQL); a later change to a view is a new migration that drops and re-creates it.

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-23
"""

from alembic import op

from sql import create_views, drop_views

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None

VIEWS = (
    "kpi_stage_reached",
    "kpi_speed_to_lead",
    "kpi_source_performance",
    "kpi_recycling",
    "kpi_waiting",
    "kpi_deals",
)


def upgrade() -> None:
    create_views(op, VIEWS)


def downgrade() -> None:
    drop_views(op, VIEWS)
