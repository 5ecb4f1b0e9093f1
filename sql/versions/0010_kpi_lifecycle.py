"""KPI views for the lifecycle after routing: SLA compliance by policy and rep, and each
lead's first human touch (speed to lead ends there).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from pathlib import Path

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

VIEWS = ("kpi_sla_compliance", "kpi_first_touch")
FOLDER = Path(__file__).resolve().parents[1] / "views"


def upgrade() -> None:
    for name in VIEWS:
        op.execute((FOLDER / f"{name}.sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
