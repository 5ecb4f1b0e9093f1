"""The lead store's schema as SQLAlchemy Core tables.

Migrations under ``sql/versions`` create exactly this schema (a test compares the two);
change both together. Times are UTC everywhere (``timestamptz`` on PostgreSQL, naive UTC
text on SQLite).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# BIGINT on PostgreSQL; INTEGER on SQLite so the column aliases the rowid.
ID = BigInteger().with_variant(Integer(), "sqlite")
JSONDoc = JSON().with_variant(JSONB(), "postgresql")
UTC = DateTime(timezone=True)


def _id() -> Column:
    return Column("id", ID, Identity(), primary_key=True)


reps = Table(
    "reps",
    metadata,
    _id(),
    Column("email", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("team", Text),
    Column("region", Text),
    Column("countries", JSONDoc),  # ISO-2 codes the rep covers; null = any
    Column("capacity", Integer, nullable=False, server_default=text("50")),
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("timezone", Text),
    Column("created_at", UTC, nullable=False),
    # Routing (migration 0004): the rep as rules/routing.yaml describes them. `code` is the
    # file's rep id (people write "ava-ng"); foreign keys keep the numeric id.
    Column("code", Text),
    Column("manager", Text),
    Column("pools", JSONDoc),
    Column("territories", JSONDoc),
    Column("industries", JSONDoc),
    Column("segments", JSONDoc),
    Column("weight", Float, nullable=False, server_default=text("1")),
    Column("max_open", Integer),
    Column("max_new_per_day", Integer),
    Column("working_hours", JSONDoc),
    Column("out_of_office", JSONDoc),
    Column("country", Text),  # public holidays (ISO country, or US-XX / CA-XX)
    Index("uq_reps_code", "code", unique=True),
)

accounts = Table(
    "accounts",
    metadata,
    _id(),
    Column("name", Text, nullable=False),
    Column("domain", Text, unique=True),
    Column("aliases", JSONDoc),  # other domains that belong to the account
    Column("owner_rep_id", ID, ForeignKey("reps.id")),
    Column("industry", Text),
    Column("employees", Integer),
    Column("revenue", Float),
    Column("country", Text),
    Column("created_at", UTC, nullable=False),
)

capture_batches = Table(
    # One received input: a file, or one page of an API. The unit of the ledger invariant
    # received = inserted + merged + quarantined, and of "same content twice is a no-op".
    "capture_batches",
    metadata,
    _id(),
    Column("source", Text, nullable=False),
    Column("target", Text, nullable=False),  # leads | events: what the records are
    Column("kind", Text, nullable=False),  # file | api
    Column("uri", Text, nullable=False),
    Column("content_hash", Text, nullable=False),
    Column("size_bytes", BigInteger),
    Column("header", JSONDoc),  # CSV header as received
    Column("mapping_version", Text),
    Column("status", Text, nullable=False),  # running | complete | failed | duplicate
    Column("message", Text),
    Column("received", Integer, nullable=False, server_default=text("0")),
    Column("inserted", Integer, nullable=False, server_default=text("0")),
    Column("merged", Integer, nullable=False, server_default=text("0")),
    Column("quarantined", Integer, nullable=False, server_default=text("0")),
    Column("flow_run_id", Text),
    Column("started_at", UTC, nullable=False),
    Column("finished_at", UTC),
    Index("ix_capture_batches_source_hash", "source", "target", "content_hash"),
)

capture_chunks = Table(
    # A bounded slice of a batch, gated and written in one transaction.
    "capture_chunks",
    metadata,
    _id(),
    Column("batch_id", ID, ForeignKey("capture_batches.id"), nullable=False),
    Column("chunk_no", Integer, nullable=False),
    Column("status", Text, nullable=False),  # accepted | rejected
    Column("received", Integer, nullable=False),
    Column("inserted", Integer, nullable=False),
    Column("merged", Integer, nullable=False),
    Column("quarantined", Integer, nullable=False),
    Column("created_at", UTC, nullable=False),
    UniqueConstraint("batch_id", "chunk_no", name="uq_capture_chunks_batch_chunk"),
)

raw_captures = Table(
    # Records exactly as received, one row per chunk: the chunk's text, zlib-compressed.
    # A record is addressed by (batch, record_no) = its line in the file or position in
    # the API page; the ledger and the quarantine carry record_no for every record.
    "raw_captures",
    metadata,
    Column("batch_id", ID, ForeignKey("capture_batches.id"), primary_key=True),
    Column("chunk_no", Integer, primary_key=True),
    Column("first_record_no", Integer),
    Column("last_record_no", Integer),
    Column("records", Integer, nullable=False),
    Column("content_hash", Text, nullable=False),  # SHA-256 of the text as received
    Column("content", LargeBinary, nullable=False),  # zlib of the text's bytes as received
)

leads = Table(
    "leads",
    metadata,
    _id(),
    Column("email", Text),
    Column("external_id", Text),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("company", Text),
    Column("title", Text),
    Column("phone", Text),
    Column("country", Text),
    Column("website", Text),
    Column("source", Text),
    Column("created_at", UTC),  # when the lead was created at its source
    Column("captured_at", UTC, nullable=False),  # first capture
    Column("last_seen_at", UTC, nullable=False),  # newest record merged in
    Column("updated_at", UTC, nullable=False),
    Column("status", Text, nullable=False),
    Column("status_changed_at", UTC, nullable=False),
    Column("temperature", Text),
    Column("score", Float),
    Column("score_version", Text),
    Column("outcome", Text),  # won | lost: a known historical outcome, for backtests
    Column("attributes", JSONDoc),
    Column("account_id", ID, ForeignKey("accounts.id")),
    Column("owner_rep_id", ID, ForeignKey("reps.id")),
    Column("claimed_by", Text),
    Column("claim_expires_at", UTC),
    # Enrichment (migration 0002): local derivations, firmographics, account match.
    Column("email_type", Text),  # business | free | disposable | role
    Column("domain", Text),  # registered domain of the company (email, else website)
    Column("seniority", Text),
    Column("department", Text),
    Column("phone_valid", Boolean),
    Column("phone_country", Text),
    Column("region", Text),  # NA | LATAM | EMEA | APAC
    Column("timezone", Text),
    Column("company_clean", Text),
    Column("industry", Text),
    Column("employees", Integer),
    Column("revenue", Float),
    Column("firmographics", Text),  # found | not_found | pending | skipped | error
    Column("account_match", Text),  # domain | alias | name~0.93
    Column("account_owner_rep_id", ID),
    Column("enrichment_notes", JSONDoc),  # why a derived field is empty
    Column("enriched_at", UTC),
    Column("enrich_attempted_at", UTC),
    # Scoring (migration 0003): score, score_version and temperature above, and when.
    Column("scored_at", UTC),
    Column("scored_event_id", ID),  # the newest engagement event the score has seen
    # Recycling (migration 0009): how often sales gave the lead back to nurture.
    Column("recycle_count", Integer, nullable=False, server_default=text("0")),
    Index(
        "uq_leads_email",
        "email",
        unique=True,
        postgresql_where=text("email IS NOT NULL"),
        sqlite_where=text("email IS NOT NULL"),
    ),
    Index(
        "uq_leads_external_id",
        "external_id",
        unique=True,
        postgresql_where=text("external_id IS NOT NULL"),
        sqlite_where=text("external_id IS NOT NULL"),
    ),
    Index("ix_leads_status_id", "status", "id"),  # hop queues: "the next leads in status S"
    # Partial (migration 0006): few leads are claimed at any time; finding a dead claim's
    # leads must not scan the table.
    Index(
        "ix_leads_claimed_by",
        "claimed_by",
        postgresql_where=text("claimed_by IS NOT NULL"),
        sqlite_where=text("claimed_by IS NOT NULL"),
    ),
    # Partial: most leads have no account, and indexing NULLs slows every bulk insert.
    Index(
        "ix_leads_account_id",
        "account_id",
        postgresql_where=text("account_id IS NOT NULL"),
        sqlite_where=text("account_id IS NOT NULL"),
    ),
)

# What the enrichment hop writes on a lead (the columns of migration 0002, plus account_id).
ENRICHED_FIELDS = (
    "email_type",
    "domain",
    "seniority",
    "department",
    "phone_valid",
    "phone_country",
    "region",
    "timezone",
    "company_clean",
    "industry",
    "employees",
    "revenue",
    "firmographics",
    "account_match",
    "account_id",
    "account_owner_rep_id",
    "enrichment_notes",
)

lead_events = Table(
    "lead_events",
    metadata,
    _id(),
    Column("lead_id", ID, nullable=False, index=True),
    Column("kind", Text, nullable=False),  # transition | merge
    Column("from_status", Text),
    Column("to_status", Text),
    Column("actor", Text, nullable=False),  # flow/hop or person that caused it
    Column("reason", Text),
    Column("details", JSONDoc),
    Column("batch_id", ID),  # capture batch, for capture events
    Column("record_no", Integer),  # the record (line) of that batch, for capture events
    Column("flow_run_id", Text),
    Column("occurred_at", UTC, nullable=False),  # business time (the flow's `now`)
    Column("recorded_at", UTC, nullable=False),  # wall clock
)

quarantine = Table(
    "quarantine",
    metadata,
    _id(),
    Column("hop", Text, nullable=False),
    Column("batch_id", ID, index=True),  # capture batch (capture hop)
    Column("lead_id", ID, index=True),  # the lead (later hops)
    Column("record_no", Integer),
    Column("record", Text),  # the record as received, or the lead row as JSON
    Column("reasons", JSONDoc, nullable=False),  # names of the expectations broken
    Column("flow_run_id", Text),
    Column("created_at", UTC, nullable=False),
    Column("released_at", UTC),
    Column("released_by", Text),
)

dq_results = Table(
    "dq_results",
    metadata,
    _id(),
    Column("hop", Text, nullable=False),
    Column("suite", Text, nullable=False),
    Column("batch_ref", Text, nullable=False),
    Column("success", Boolean, nullable=False),
    Column("evaluated", Integer, nullable=False),
    Column("passed", Integer, nullable=False),
    Column("quarantined", Integer, nullable=False),
    Column("checks", JSONDoc, nullable=False),
    Column("flow_run_id", Text),
    Column("created_at", UTC, nullable=False),
    Index("ix_dq_results_hop_created", "hop", "created_at"),
)

engagement_events = Table(
    "engagement_events",
    metadata,
    _id(),
    Column("lead_id", ID, ForeignKey("leads.id"), nullable=False),
    Column("event_type", Text, nullable=False),
    Column("occurred_at", UTC, nullable=False),
    Column("url", Text),  # page URL for page views / clicks: rules match on it
    Column("properties", JSONDoc),
    Column("source", Text),
    Column("event_key", Text, nullable=False, unique=True),  # makes re-ingest a no-op
    Column("batch_id", ID),
    Column("record_no", Integer),  # the record of that batch it came from
    Index("ix_engagement_events_lead_time", "lead_id", "occurred_at"),
)

firmographics_cache = Table(
    # One provider answer per company domain, reused until it expires.
    "firmographics_cache",
    metadata,
    Column("provider", Text, primary_key=True),
    Column("domain", Text, primary_key=True),
    Column("status", Text, nullable=False),  # found | not_found | invalid
    Column("industry", Text),
    Column("employees", Integer),
    Column("revenue", Float),
    Column("country", Text),
    Column("notes", JSONDoc),  # fields the provider sent that could not be used, and why
    Column("fetched_at", UTC, nullable=False),
    Column("expires_at", UTC, nullable=False),
)

rule_sets = Table(
    # Every rule set ever used, by version (the hash of its text), with the text itself.
    "rule_sets",
    metadata,
    Column("version", Text, primary_key=True),
    Column("kind", Text, nullable=False),  # scoring
    Column("name", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UTC, nullable=False),
)

lead_scores = Table(
    # Score history: one row per lead per scoring that was applied.
    "lead_scores",
    metadata,
    _id(),
    Column("lead_id", ID, nullable=False),
    Column("version", Text, nullable=False),
    Column("score", Float, nullable=False),
    Column("raw_points", Float, nullable=False),
    Column("temperature", Text, nullable=False),
    Column("decision", Text, nullable=False),  # mql | nurturing | disqualified | kept
    # {rule: points} for every rule that contributed; plain JSON (not JSONB): written a
    # million rows at a time, read one lead at a time.
    Column("fired", JSON),
    Column("scored_at", UTC, nullable=False),  # business time the score is as of
    Column("flow_run_id", Text),
    Index("ix_lead_scores_lead_id", "lead_id"),
)

crm_records = Table(
    # One row per lead per CRM it was written to (migration 0012): the CRM's id for it and
    # what leadflow wrote last, property by property: a CRM value that differs from it was
    # set by a person, which the mapping's conflict policy then weighs (leadflow/crm/).
    "crm_records",
    metadata,
    Column("crm", Text, primary_key=True),  # hubspot | salesforce
    Column("lead_id", ID, primary_key=True),
    Column("crm_id", Text),
    Column("pushed", JSON, nullable=False),  # {property: value} as last written
    Column("pushed_at", UTC, nullable=False),
    Column("pending", JSON),  # {property: value} about to be written (before the call)
    Column("pulled", JSON),  # {property: value} as last read back by the pull
    Column("pulled_at", UTC),
)

source_cursors = Table(
    "source_cursors",
    metadata,
    Column("source", Text, primary_key=True),
    Column("cursor", Text, nullable=False),
    Column("updated_at", UTC, nullable=False),
)

claims = Table(
    # One row per leased batch (migration 0006): the leads carry the token, this row the
    # expiry, so a heartbeat renews one row instead of rewriting every lead of the batch.
    "claims",
    metadata,
    Column("token", Text, primary_key=True),
    Column("hop", Text, nullable=False),
    Column("holder", Text, nullable=False),  # host:pid of the claimant
    Column("flow_run_id", Text),
    Column("leads", Integer, nullable=False),
    Column("claimed_at", UTC, nullable=False),
    Column("renewed_at", UTC, nullable=False),
    Column("expires_at", UTC, nullable=False),
)

routing_state = Table(
    # The weighted round robin's memory (migration 0004): per pool and rep code, leads served
    # (in lead units, lifted when a rep comes back) and whether the rep was available at the
    # pool's last turn. Shared by concurrent runs, kept across restarts.
    "routing_state",
    metadata,
    Column("pool", Text, primary_key=True),
    Column("rep", Text, primary_key=True),
    Column("served", Float, nullable=False),
    Column("available", Boolean, nullable=False),
    Column("updated_at", UTC, nullable=False),
)

assignments = Table(
    # Every routing decision (migration 0004): who, by which step/rule/pool and rules version,
    # why in words, and the candidates considered with why each was skipped.
    "assignments",
    metadata,
    _id(),
    Column("lead_id", ID, nullable=False),
    Column("rep_id", ID, ForeignKey("reps.id")),
    Column("rep_code", Text, nullable=False),
    Column("step", Text, nullable=False),  # account_owner | rule | pool_fallback | fallback
    Column("pool", Text),
    Column("rule", Text),
    Column("version", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("candidates", JSON),  # {rep code: "assigned" | why skipped}; written in bulk
    Column("assigned_at", UTC, nullable=False),
    Column("flow_run_id", Text),
    Column("released_at", UTC),  # the lead left this owner (recycled, reassigned)
    Column("released_reason", Text),
    Column("sla_stage", Text),  # SLA timers started for: null | assigned | accepted (0008)
    # Routing keeps the lead from this rep until then after a reject or an SLA loss; null:
    # for good (0009; recycling sets it from its cool-down).
    Column("avoid_until", UTC),
    Index("ix_assignments_lead_id", "lead_id"),
    Index("ix_assignments_rep_assigned", "rep_code", "assigned_at"),  # "new today" per rep
)

outbox = Table(
    # Everything that leaves leadflow (migration 0004), written in the transaction of the
    # decision that caused it; sent by leadflow/routing/notices.py. See leadflow/outbox/store.py.
    "outbox",
    metadata,
    _id(),
    Column("idempotency_key", Text, nullable=False),
    # owner_notification | sla_escalation | nurture_touch | webhook | crm_sync
    Column("kind", Text, nullable=False),
    Column("channel", Text, nullable=False),  # email | webhook | crm
    Column("lead_id", ID),
    Column("recipient", Text, nullable=False),
    Column("subject", Text),
    Column("body", Text),
    Column("payload", JSON),
    Column("attachments", JSON),  # [{filename, content_type, content}] (ICS invitations)
    Column("status", Text, nullable=False),  # pending | sending | sent | failed | dead
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Column("next_attempt_at", UTC, nullable=False),  # when it is due (again)
    Column("created_at", UTC, nullable=False),
    Column("sent_at", UTC),
    Column("flow_run_id", Text),
    # Migration 0011: the sender holding a ``sending`` message and until when (wall clock),
    # and since when its temporary failures run (it dies when its kind's budget is spent).
    Column("claim_token", Text),
    Column("lease_until", UTC),
    Column("failing_since", UTC),
    UniqueConstraint("idempotency_key", name="uq_outbox_idempotency_key"),
    Index("ix_outbox_status_due", "status", "next_attempt_at"),
    # Migration 0012: a CRM sync claims its own kind and CRM in due order, and a lead's
    # other messages (the lane claims its leads' messages the same way).
    Index(
        "ix_outbox_kind_recipient_due",
        "kind",
        "recipient",
        "next_attempt_at",
        "id",
        postgresql_where=text("status IN ('pending', 'failed', 'sending')"),
        sqlite_where=text("status IN ('pending', 'failed', 'sending')"),
    ),
    Index("ix_outbox_lead", "lead_id"),
)

activities = Table(
    # What sales did with a lead (migration 0008): calls, emails, meetings and dispositions,
    # captured like events. ``automated`` marks touches no person made (nurture): they never
    # meet an SLA. The same activity received twice is one row (``activity_key``).
    "activities",
    metadata,
    _id(),
    Column("lead_id", ID, ForeignKey("leads.id"), nullable=False),
    Column("rep_id", ID, ForeignKey("reps.id")),
    Column("activity_type", Text, nullable=False),
    Column("occurred_at", UTC, nullable=False),
    Column("automated", Boolean, nullable=False, server_default=text("false")),
    Column("reason", Text),  # why a reject / lost / not now
    Column("properties", JSONDoc),
    Column("source", Text),
    Column("activity_key", Text, nullable=False, unique=True),
    Column("batch_id", ID),
    Column("record_no", Integer),
    Column("recorded_at", UTC, nullable=False),
    # Migration 0013: a cancelled booking voids its ``meeting_booked`` (no SLA counts it).
    Column("voided_at", UTC),
    Index("ix_activities_lead_time", "lead_id", "occurred_at"),
)

booking_links = Table(
    # One row per booking link mailed to a lead (migration 0013): the token's random part
    # (no lead id or address is ever in a link) and when the link expires.
    "booking_links",
    metadata,
    _id(),
    Column("lead_id", ID, ForeignKey("leads.id"), nullable=False),
    Column("token_id", Text, nullable=False),
    Column("created_at", UTC, nullable=False),
    Column("expires_at", UTC, nullable=False),
    UniqueConstraint("token_id", name="uq_booking_links_token_id"),
    Index("ix_booking_links_lead", "lead_id"),
)

_LIVE = text("status = 'booked'")
meetings = Table(
    # Meetings booked through the booking page (migration 0013), cancelled ones kept. Slots
    # lie on a grid of the meeting's length, so "one live meeting per rep per start" is "no
    # two live meetings of a rep overlap"; one live meeting per link makes a replay harmless.
    "meetings",
    metadata,
    _id(),
    Column("lead_id", ID, ForeignKey("leads.id"), nullable=False),
    Column("rep_id", ID, ForeignKey("reps.id"), nullable=False),
    Column("rep_code", Text, nullable=False),
    Column("starts_at", UTC, nullable=False),
    Column("ends_at", UTC, nullable=False),
    Column("status", Text, nullable=False),  # booked | cancelled
    Column("link_id", ID, ForeignKey("booking_links.id")),
    Column("manage_id", Text, nullable=False),  # what reschedule / cancel links sign
    Column("uid", Text, nullable=False),  # the ICS and CalDAV event's UID
    Column("sequence", Integer, nullable=False, server_default=text("0")),  # ICS SEQUENCE
    Column("lead_zone", Text),  # the time zone the lead saw the slots in
    Column("busy_from", Text),  # caldav | leadflow (the rep's calendar could not be read)
    Column("reassigned_from", Text),  # the owner before, when booking moved the lead
    Column("activity_id", ID),  # its meeting_booked activity
    Column("booked_at", UTC, nullable=False),
    Column("cancelled_at", UTC),
    Column("cancel_reason", Text),
    UniqueConstraint("manage_id", name="uq_meetings_manage_id"),
    Index(
        "uq_meetings_rep_slot",
        "rep_id",
        "starts_at",
        unique=True,
        postgresql_where=_LIVE,
        sqlite_where=_LIVE,
    ),
    Index(
        "uq_meetings_link_live", "link_id", unique=True, postgresql_where=_LIVE, sqlite_where=_LIVE
    ),
    Index("ix_meetings_lead", "lead_id"),
    Index("ix_meetings_rep_time", "rep_id", "starts_at"),
)

sla_timers = Table(
    # One clock per (assignment, policy) (migration 0008): started at assignment or at the
    # stage before, due after the policy's business time in the owner's calendar, met by the
    # earliest genuine activity, kept open after a breach until met so the true time is known.
    "sla_timers",
    metadata,
    _id(),
    Column("lead_id", ID, nullable=False),
    Column("assignment_id", ID, nullable=False),
    Column("rep_id", ID),
    Column("policy", Text, nullable=False),
    Column("started_at", UTC, nullable=False),
    Column("warn_at", UTC, nullable=False),
    Column("due_at", UTC, nullable=False),
    Column("escalate_at", UTC),  # level 2; null: the policy does not escalate
    Column("met_at", UTC),
    Column("met_by", ID),  # the activity
    Column("business_minutes", Float),  # start to met, in the owner's business time
    Column("warned_at", UTC),
    Column("level", Integer, nullable=False, server_default=text("0")),  # breach level reached
    Column("closed_at", UTC),
    Column("closed_reason", Text),  # met | reassigned | lead left: <status>
    Column("created_at", UTC, nullable=False),
    UniqueConstraint("assignment_id", "policy", name="uq_sla_timers_assignment_policy"),
    Index("ix_sla_timers_open_due", "closed_at", "due_at"),
    Index("ix_sla_timers_lead", "lead_id"),
)

sla_breaches = Table(
    # Each breach once per level (migration 0008): 1 notifies rep and manager, 2 reassigns.
    "sla_breaches",
    metadata,
    _id(),
    Column("timer_id", ID, ForeignKey("sla_timers.id"), nullable=False),
    Column("lead_id", ID, nullable=False),
    Column("rep_id", ID),
    Column("policy", Text, nullable=False),
    Column("level", Integer, nullable=False),
    Column("action", Text, nullable=False),  # notified | reassigned | to_manager | met_late
    Column("reason", Text, nullable=False),
    Column("new_rep_id", ID),
    Column("due_at", UTC, nullable=False),
    Column("recorded_at", UTC, nullable=False),  # the check's `now`
    Column("flow_run_id", Text),
    UniqueConstraint("timer_id", "level", name="uq_sla_breaches_timer_level"),
)

cadence_enrolments = Table(
    # One row per time a lead entered a cadence (migration 0009); a re-entry is a new row, so
    # history is never deleted. ``step`` is the next step to send (1-based); ``due_at`` when.
    "cadence_enrolments",
    metadata,
    _id(),
    Column("lead_id", ID, nullable=False),
    Column("cadence", Text, nullable=False),
    Column("version", Text, nullable=False),  # the cadences file version it follows
    Column("entry_no", Integer, nullable=False),  # 1 = first time in this cadence
    Column("step", Integer, nullable=False),
    Column("status", Text, nullable=False),  # active | completed | exited
    Column("due_at", UTC),  # next touch; null once ended
    Column("enrolled_at", UTC, nullable=False),
    Column("last_touch_at", UTC),
    Column("deferrals", Integer, nullable=False, server_default=text("0")),  # cap, quiet hours
    Column("last_error", Text),  # why the due touch could not be built (a template error)
    Column("ended_at", UTC),
    Column("end_reason", Text),  # finished | replied | became_mql | suppressed: ... | ...
    Column("updated_at", UTC, nullable=False),
    Index("ix_cadence_enrolments_due", "status", "due_at"),
    Index("ix_cadence_enrolments_lead", "lead_id"),
    Index(
        "uq_cadence_enrolments_active",
        "lead_id",
        "cadence",
        unique=True,
        postgresql_where=text("status = 'active'"),
        sqlite_where=text("status = 'active'"),
    ),
)

cadence_touches = Table(
    # Every touch decided (migration 0009): queued to the outbox, or suppressed. The key
    # (enrolment, step) is unique, so no step is ever queued twice.
    "cadence_touches",
    metadata,
    _id(),
    Column("enrolment_id", ID, nullable=False),
    Column("lead_id", ID, nullable=False),
    Column("cadence", Text, nullable=False),
    Column("step", Integer, nullable=False),
    Column("step_name", Text, nullable=False),
    Column("channel", Text, nullable=False),  # email | rep_task | webhook
    Column("status", Text, nullable=False),  # queued | suppressed
    Column("reason", Text),
    Column("outbox_key", Text),  # touch:<enrolment>:<step>
    Column("version", Text, nullable=False),
    Column("due_at", UTC, nullable=False),
    Column("decided_at", UTC, nullable=False),  # the tick's `now`: the frequency cap counts it
    Column("flow_run_id", Text),
    UniqueConstraint("enrolment_id", "step", name="uq_cadence_touches_enrolment_step"),
    Index("ix_cadence_touches_lead_time", "lead_id", "decided_at"),
)


def lead_column(name: str) -> Any | None:
    """The ``leads`` column a rule field names: a column, or ``attributes.KEY`` as the JSON
    value's text labelled with the field's name; None when the lead has no such column."""
    if name.startswith("attributes."):
        return leads.c.attributes[name.split(".", 1)[1]].as_string().label(name)
    return leads.c.get(name)
