"""Booking: the lead books the first meeting (``booking_links``, ``meetings``).

``booking_links`` holds one row per link mailed to a lead: a random ``token_id`` (the token's
unguessable part; the lead's id is never in a link) and when it expires. ``meetings`` holds
every meeting booked through the booking page, cancelled ones included; two partial unique
indexes are the promises: one live meeting per rep per slot start (slots lie on a grid of the
meeting's length, so two live meetings of a rep never overlap), and one live meeting per link
(a form posted twice books once). A cancelled booking voids its ``meeting_booked`` activity
(``activities.voided_at``): the SLA check no longer counts it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
LIVE = sa.text("status = 'booked'")


def upgrade() -> None:
    op.create_table(
        "booking_links",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("lead_id", ID, sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("token_id", sa.Text, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.UniqueConstraint("token_id", name="uq_booking_links_token_id"),
    )
    op.create_index("ix_booking_links_lead", "booking_links", ["lead_id"])
    op.create_table(
        "meetings",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("lead_id", ID, sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("rep_id", ID, sa.ForeignKey("reps.id"), nullable=False),
        sa.Column("rep_code", sa.Text, nullable=False),
        sa.Column("starts_at", UTC, nullable=False),
        sa.Column("ends_at", UTC, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("link_id", ID, sa.ForeignKey("booking_links.id")),
        sa.Column("manage_id", sa.Text, nullable=False),
        sa.Column("uid", sa.Text, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("lead_zone", sa.Text),
        sa.Column("busy_from", sa.Text),
        sa.Column("reassigned_from", sa.Text),
        sa.Column("activity_id", ID),
        sa.Column("booked_at", UTC, nullable=False),
        sa.Column("cancelled_at", UTC),
        sa.Column("cancel_reason", sa.Text),
        sa.UniqueConstraint("manage_id", name="uq_meetings_manage_id"),
    )
    op.create_index(
        "uq_meetings_rep_slot",
        "meetings",
        ["rep_id", "starts_at"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index(
        "uq_meetings_link_live",
        "meetings",
        ["link_id"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index("ix_meetings_lead", "meetings", ["lead_id"])
    op.create_index("ix_meetings_rep_time", "meetings", ["rep_id", "starts_at"])
    with op.batch_alter_table("activities") as batch:
        batch.add_column(sa.Column("voided_at", UTC))


def downgrade() -> None:
    with op.batch_alter_table("activities") as batch:
        batch.drop_column("voided_at")
    op.drop_table("meetings")
    op.drop_table("booking_links")
