"""CRM sync: what leadflow last wrote to each lead's CRM record (``crm_records``).

The outbox gains the ``crm_sync`` kind on the ``crm`` channel (no schema change: kind and
channel are text); this table keeps, per CRM and lead, the CRM's id for the record and the
values leadflow wrote last, so a value a person changed in the CRM since can be told apart
from leadflow's own; two outbox indexes serve the sync's claims (its kind and CRM in due
order, a lead's messages).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "crm_records",
        sa.Column("crm", sa.Text, primary_key=True),
        sa.Column("lead_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("crm_id", sa.Text),
        sa.Column("pushed", sa.JSON, nullable=False),
        sa.Column("pushed_at", UTC, nullable=False),
        sa.Column("pending", sa.JSON),
        sa.Column("pulled", sa.JSON),
        sa.Column("pulled_at", UTC),
    )
    # A CRM sync claims its kind and CRM in due order, then its leads' other messages.
    unsent = sa.text("status IN ('pending', 'failed', 'sending')")
    op.create_index(
        "ix_outbox_kind_recipient_due",
        "outbox",
        ["kind", "recipient", "next_attempt_at", "id"],
        postgresql_where=unsent,
        sqlite_where=unsent,
    )
    op.create_index("ix_outbox_lead", "outbox", ["lead_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_lead", table_name="outbox")
    op.drop_index("ix_outbox_kind_recipient_due", table_name="outbox")
    op.drop_table("crm_records")
