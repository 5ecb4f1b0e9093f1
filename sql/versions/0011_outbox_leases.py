"""The outbox's sender leases and failure budget.

- ``outbox.claim_token``: which sender holds a ``sending`` message. Every step after the claim
  (renewing the lease just before the send, marking it sent or failed) is conditional on the
  token, so a sender whose lease was taken over can never send or mark that message.
- ``outbox.lease_until``: when a sender's hold on a ``sending`` message ends, on the wall
  clock (never the flow's ``now``: a run told it is two hours ago must not see every other
  sender's lease as long expired).
- ``outbox.failing_since``: when the current run of temporary failures began; a message
  dies when its kind's time budget is spent, not after a count of attempts.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("outbox", sa.Column("claim_token", sa.Text))
    op.add_column("outbox", sa.Column("lease_until", UTC))
    op.add_column("outbox", sa.Column("failing_since", UTC))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("failing_since")
        batch.drop_column("lease_until")
        batch.drop_column("claim_token")
