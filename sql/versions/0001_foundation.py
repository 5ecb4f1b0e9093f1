"""Foundation: leads, captures, the lead-event ledger, quarantine, DQ results, reference data.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONDoc = sa.JSON().with_variant(JSONB(), "postgresql")
UTC = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", ID, sa.Identity(), primary_key=True)


def upgrade() -> None:
    op.create_table(
        "reps",
        _id(),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("team", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("countries", JSONDoc),
        sa.Column("capacity", sa.Integer, nullable=False, server_default=sa.text("50")),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("timezone", sa.Text),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_table(
        "accounts",
        _id(),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("domain", sa.Text, unique=True),
        sa.Column("aliases", JSONDoc),
        sa.Column("owner_rep_id", ID, sa.ForeignKey("reps.id")),
        sa.Column("industry", sa.Text),
        sa.Column("employees", sa.Integer),
        sa.Column("revenue", sa.Float),
        sa.Column("country", sa.Text),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_table(
        "capture_batches",
        _id(),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("header", JSONDoc),
        sa.Column("mapping_version", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("received", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("inserted", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("merged", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("quarantined", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("flow_run_id", sa.Text),
        sa.Column("started_at", UTC, nullable=False),
        sa.Column("finished_at", UTC),
    )
    op.create_index(
        "ix_capture_batches_source_hash", "capture_batches", ["source", "target", "content_hash"]
    )
    op.create_table(
        "capture_chunks",
        _id(),
        sa.Column("batch_id", ID, sa.ForeignKey("capture_batches.id"), nullable=False),
        sa.Column("chunk_no", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("received", sa.Integer, nullable=False),
        sa.Column("inserted", sa.Integer, nullable=False),
        sa.Column("merged", sa.Integer, nullable=False),
        sa.Column("quarantined", sa.Integer, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.UniqueConstraint("batch_id", "chunk_no", name="uq_capture_chunks_batch_chunk"),
    )
    op.create_table(
        "raw_captures",
        sa.Column("batch_id", ID, sa.ForeignKey("capture_batches.id"), primary_key=True),
        sa.Column("chunk_no", sa.Integer, primary_key=True),
        sa.Column("first_record_no", sa.Integer),
        sa.Column("last_record_no", sa.Integer),
        sa.Column("records", sa.Integer, nullable=False),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "leads",
        _id(),
        sa.Column("email", sa.Text),
        sa.Column("external_id", sa.Text),
        sa.Column("first_name", sa.Text),
        sa.Column("last_name", sa.Text),
        sa.Column("company", sa.Text),
        sa.Column("title", sa.Text),
        sa.Column("phone", sa.Text),
        sa.Column("country", sa.Text),
        sa.Column("website", sa.Text),
        sa.Column("source", sa.Text),
        sa.Column("created_at", UTC),
        sa.Column("captured_at", UTC, nullable=False),
        sa.Column("last_seen_at", UTC, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("status_changed_at", UTC, nullable=False),
        sa.Column("temperature", sa.Text),
        sa.Column("score", sa.Float),
        sa.Column("score_version", sa.Text),
        sa.Column("outcome", sa.Text),
        sa.Column("attributes", JSONDoc),
        sa.Column("account_id", ID, sa.ForeignKey("accounts.id")),
        sa.Column("owner_rep_id", ID, sa.ForeignKey("reps.id")),
        sa.Column("claimed_by", sa.Text),
        sa.Column("claim_expires_at", UTC),
    )
    for name, column in (("uq_leads_email", "email"), ("uq_leads_external_id", "external_id")):
        op.create_index(
            name,
            "leads",
            [column],
            unique=True,
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
        )
    op.create_index("ix_leads_status_id", "leads", ["status", "id"])
    op.create_index(
        "ix_leads_account_id",
        "leads",
        ["account_id"],
        postgresql_where=sa.text("account_id IS NOT NULL"),
        sqlite_where=sa.text("account_id IS NOT NULL"),
    )
    op.create_table(
        "lead_events",
        _id(),
        sa.Column("lead_id", ID, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("from_status", sa.Text),
        sa.Column("to_status", sa.Text),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("details", JSONDoc),
        sa.Column("batch_id", ID),
        sa.Column("record_no", sa.Integer),
        sa.Column("flow_run_id", sa.Text),
        sa.Column("occurred_at", UTC, nullable=False),
        sa.Column("recorded_at", UTC, nullable=False),
    )
    op.create_index("ix_lead_events_lead_id", "lead_events", ["lead_id"])
    op.create_table(
        "quarantine",
        _id(),
        sa.Column("hop", sa.Text, nullable=False),
        sa.Column("batch_id", ID),
        sa.Column("lead_id", ID),
        sa.Column("record_no", sa.Integer),
        sa.Column("record", sa.Text),
        sa.Column("reasons", JSONDoc, nullable=False),
        sa.Column("flow_run_id", sa.Text),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("released_at", UTC),
        sa.Column("released_by", sa.Text),
    )
    op.create_index("ix_quarantine_batch_id", "quarantine", ["batch_id"])
    op.create_index("ix_quarantine_lead_id", "quarantine", ["lead_id"])
    op.create_table(
        "dq_results",
        _id(),
        sa.Column("hop", sa.Text, nullable=False),
        sa.Column("suite", sa.Text, nullable=False),
        sa.Column("batch_ref", sa.Text, nullable=False),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("evaluated", sa.Integer, nullable=False),
        sa.Column("passed", sa.Integer, nullable=False),
        sa.Column("quarantined", sa.Integer, nullable=False),
        sa.Column("checks", JSONDoc, nullable=False),
        sa.Column("flow_run_id", sa.Text),
        sa.Column("created_at", UTC, nullable=False),
    )
    op.create_index("ix_dq_results_hop_created", "dq_results", ["hop", "created_at"])
    op.create_table(
        "engagement_events",
        _id(),
        sa.Column("lead_id", ID, sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("occurred_at", UTC, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("properties", JSONDoc),
        sa.Column("source", sa.Text),
        sa.Column("event_key", sa.Text, nullable=False, unique=True),
        sa.Column("batch_id", ID),
    )
    op.create_index(
        "ix_engagement_events_lead_time", "engagement_events", ["lead_id", "occurred_at"]
    )
    op.create_table(
        "source_cursors",
        sa.Column("source", sa.Text, primary_key=True),
        sa.Column("cursor", sa.Text, nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
    )
    _make_ledger_append_only()


def _make_ledger_append_only() -> None:
    """The ledger is evidence: refuse UPDATE and DELETE on lead_events in the database itself."""
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION lead_events_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'lead_events is append-only (% refused)', TG_OP;
            END $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER lead_events_append_only BEFORE UPDATE OR DELETE ON lead_events "
            "FOR EACH ROW EXECUTE FUNCTION lead_events_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER lead_events_no_{action.lower()} BEFORE {action} ON lead_events "
                f"BEGIN SELECT RAISE(ABORT, 'lead_events is append-only ({action} refused)'); END"
            )


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS lead_events_append_only ON lead_events")
        op.execute("DROP FUNCTION IF EXISTS lead_events_append_only()")
    for name in (
        "source_cursors",
        "engagement_events",
        "dq_results",
        "quarantine",
        "lead_events",
        "leads",
        "raw_captures",
        "capture_chunks",
        "capture_batches",
        "accounts",
        "reps",
    ):
        op.drop_table(name)
