"""Sending ``crm_sync`` messages: each lead's latest values, upserted in the CRM's batches.

One run (``sync``) holds the CRM's sync lock (one sender per CRM at a time, so two senders
never write one lead's values out of order), then claims due messages of that CRM from the
outbox, coalesces them per lead, reads the leads' current values, merges them with what the
CRM holds now where a person may have changed a value since leadflow wrote it (the mapping's
conflict policy, ``mapping.merge``), and upserts the records through the adapter. Per lead:

- written: every message of the lead is ``sent``; ``crm_records`` keeps what was written;
- unchanged (the CRM already holds exactly these values): ``sent`` without a write;
- the CRM refused the record (a bad value, a property it does not have, a rep it does not
  know as a user): ``dead`` with the CRM's message and the mapping field it concerns, the
  other leads go on; a temporary refusal: ``failed``, retried with backoff;
- the whole call failed: 401/403 (credentials) and rate limits put every claimed message back
  untried (``pending``, due after the CRM's ``Retry-After``) and end the run with the reason;
  a 5xx or lost connection: ``failed`` with backoff.

A crash anywhere leaves the claimed messages ``sending`` until their lease ends; the next run
upserts the same leads again with their values then (the id property makes a second upsert
an update, never a second record).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, and_, func, select, text

from leadflow import store
from leadflow import tables as t
from leadflow.crm import mapping as crm_mapping
from leadflow.crm import store as crm_store
from leadflow.crm.base import Adapter, AuthError, CrmError, Outcome, RateLimited, Record
from leadflow.crm.mapping import CrmMapping
from leadflow.outbox import store as outbox
from leadflow.quarantine import masked

LABEL = crm_mapping.LABEL
AUTH_RETRY = timedelta(minutes=5)  # credentials refused: try again after (a person fixes them)
LOCK_WAIT_SECONDS = 30.0
MORE_PER_LEAD = 20  # a lead's other waiting messages a claim takes with its first
PERSONAL = frozenset({"email", "phone", "first_name", "last_name"})


@dataclass
class SyncReport:
    crm: str
    claimed: int = 0  # messages
    leads: int = 0  # leads they were about (after coalescing)
    written: int = 0  # leads upserted
    created: int = 0  # of which new CRM records
    unchanged: int = 0  # leads whose CRM record already held these values
    kept: int = 0  # fields left as a person set them in the CRM (conflict policy)
    failed: int = 0  # leads retried later
    dead: int = 0  # leads given up (dead letters, with the CRM's reason)
    deferred: int = 0  # messages put back untried (credentials, rate limit)
    error: str | None = None  # why the run stopped early
    waiting: int = 0  # messages of this CRM still unsent after the run (pending or failed)
    next_due: str | None = None  # when the first of them is due (ISO)
    seconds: float = 0.0
    usage: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        label = LABEL.get(self.crm, self.crm)
        line = (
            f"{label}: {self.leads} lead(s) from {self.claimed} message(s): {self.written} "
            f"written ({self.created} new), {self.unchanged} unchanged, {self.failed} to retry, "
            f"{self.dead} dead"
        )
        if self.kept:
            line += f", {self.kept} field(s) kept as set in {label}"
        if self.deferred:
            line += f", {self.deferred} put back"
        if self.error:
            line += f"; stopped: {self.error}"
        if self.waiting:
            line += f"; {self.waiting} message(s) waiting, next due {self.next_due}"
        return line


# --------------------------------------------------------------------------- the lock


@contextlib.contextmanager
def sync_lock(engine: Engine, crm: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[bool]:
    """One sender per CRM (a PostgreSQL advisory lock per schema, held for the run); yields
    False when another held it for ``wait`` seconds. SQLite has one writer at a time anyway."""
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = f"leadflow-crm-sync:{crm}"
    with engine.connect() as conn:
        deadline = time.monotonic() + wait
        while True:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(hashtext(current_schema() || :k))"), {"k": key}
            )
            if got.scalar():
                break
            conn.rollback()
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(0.2)
        conn.commit()
        try:
            yield True
        finally:
            conn.execute(
                text("SELECT pg_advisory_unlock(hashtext(current_schema() || :k))"), {"k": key}
            )
            conn.commit()


# --------------------------------------------------------------------------- planning


@dataclass
class Planned:
    """What to do with one lead."""

    lead_id: int
    status: str
    record: Record | None = None  # None: nothing to write
    kept: list[str] = field(default_factory=list)
    unchanged: bool = False
    error: str | None = None  # refused before any call (unknown rep, deleted record)
    crm_now: dict[str, Any] | None = None
    ours: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)  # what the CRM must hold
    crm_id: str | None = None


class Owners:
    """Rep email -> CRM owner id: the mapping's ``owners`` over the CRM's user list (read once
    per run, only when a lead has an owner)."""

    def __init__(self, adapter: Adapter, mapping: CrmMapping) -> None:
        self.adapter = adapter
        self.explicit = {k.lower(): v for k, v in mapping.owners.items()}
        self._crm: dict[str, str] | None = None

    def of(self, email: str) -> str | None:
        key = email.lower()
        if key in self.explicit:
            return self.explicit[key]
        if self._crm is None:
            self._crm = self.adapter.owners()
        return self._crm.get(key)


def _field_of(mapping: CrmMapping, message: str) -> str:
    """The mapping field a CRM error names (by its property), as ``fields.<name> -> <prop>``."""
    lowered = message.lower()
    for name, rule in mapping.fields.items():
        if rule.to.lower() in lowered:
            return f" ({crm_mapping.mapping_path(mapping.crm)}: fields.{name} writes {rule.to})"
    return ""


def plan(
    conn: Connection,
    adapter: Adapter,
    mapping: CrmMapping,
    owners: Owners,
    lead_ids: Sequence[int],
    *,
    read_all: bool = False,
) -> list[Planned]:
    """What each lead's record must become. Reads the CRM's current values of every lead
    (a record a person made, or one leadflow wrote before a crash, is merged, not created
    over), and merges. ``read_all``: for looking (dry run, diff), not writing."""
    label = LABEL.get(mapping.crm, mapping.crm)
    frame = crm_store.lead_frame(conn, lead_ids)
    before = crm_store.pushed(conn, mapping.crm, lead_ids)
    wants_owner = "owner" in mapping.fields
    rows = frame.to_dict("records")
    keys = [str(int(r["id"])) for r in rows]
    props = [rule.to for rule in mapping.fields.values()]
    current = adapter.read(keys, props) if keys else {}
    out: list[Planned] = []
    for row in rows:
        lead_id = int(row["id"])
        item = Planned(lead_id, str(row["status"]))
        out.append(item)
        owner_email = row.get("owner_email")
        if wants_owner and isinstance(owner_email, str) and owner_email:
            row["owner_id"] = owners.of(owner_email)
            if row["owner_id"] is None:
                item.error = (
                    f"the owner, rep {masked(owner_email)}, is not a {label} user: add them in "
                    f"{label}, or map their email under owners: in "
                    f"{crm_mapping.mapping_path(mapping.crm)}"
                )
                continue
        item.ours = crm_mapping.leadflow_values(mapping, row)
        previous = before.get(lead_id)
        crm_now = current.get(str(lead_id))
        item.crm_now = crm_now
        deleted = previous is not None and crm_now is None and not read_all
        if deleted and mapping.on_deleted == "dead_letter":
            item.error = (
                f"the {label} record was deleted (on_deleted: dead_letter in "
                f"{crm_mapping.mapping_path(mapping.crm)})"
            )
            continue
        merged = crm_mapping.merge(
            mapping,
            item.ours,
            crm_now,
            previous["pushed"] if previous else None,
            item.status,
            previous["pulled"] if previous else None,
            previous["pending"] if previous else None,
        )
        item.kept = merged.kept
        item.properties = merged.properties
        if crm_now is not None and all(
            crm_mapping._same(crm_now.get(p), v) for p, v in merged.properties.items()
        ):
            item.unchanged = True  # the CRM holds these already (a write before a crash, say)
            item.crm_id = str(crm_now.get("id")) if crm_now.get("id") else None
            continue
        item.record = crm_mapping.record(lead_id, mapping, merged.properties, row.get("email"))
    missing = set(int(i) for i in lead_ids) - {int(r["id"]) for r in rows}
    for lead_id in sorted(missing):
        out.append(Planned(lead_id, "", error="the lead no longer exists in leadflow"))
    return out


# --------------------------------------------------------------------------- sending


class _Run:
    def __init__(
        self,
        engine: Engine,
        adapter: Adapter,
        mapping: CrmMapping,
        now: datetime,
        lease: timedelta,
    ) -> None:
        self.engine = engine
        self.adapter = adapter
        self.mapping = mapping
        self.now = now
        self.lease = lease
        self.token = outbox.new_token()
        self.owners = Owners(adapter, mapping)
        self.report = SyncReport(mapping.crm)

    def claim(self, size: int, lead_ids: Sequence[int] | None) -> pd.DataFrame:
        """Up to ``size`` due messages, then every other due message of the same leads (a
        lead's messages are far apart in the queue: one per decision), so each lead is
        written once a run with all its changes, not once per claim it straddles."""
        first = self._claim(size, lead_ids)
        if first.empty:
            return first
        leads = sorted({int(i) for i in first["lead_id"]})
        rest = self._claim(MORE_PER_LEAD * len(leads), leads)
        return pd.concat([first, rest], ignore_index=True) if not rest.empty else first

    def _claim(self, size: int, lead_ids: Sequence[int] | None) -> pd.DataFrame:
        return outbox.claim_due(
            self.engine,
            size,
            self.now,
            token=self.token,
            kinds=[crm_store.KIND],
            channels=[crm_store.CHANNEL],
            recipients=[self.mapping.crm],
            lead_ids=lead_ids,
            lease=self.lease,
            clock=datetime.now(UTC),
        )

    def put_back(self, claimed: pd.DataFrame, why: str, delay: timedelta) -> None:
        with self.engine.begin() as conn:
            deferred, died = outbox.defer(
                conn, claimed["id"].tolist(), why, self.now, token=self.token, delay=delay
            )
        self.report.deferred += deferred
        self.report.dead += died

    def batch(self, claimed: pd.DataFrame) -> bool:
        """Send one claimed batch; False when the run must stop."""
        messages: dict[int, list[int]] = {}
        for message_id, lead_id in zip(claimed["id"], claimed["lead_id"], strict=True):
            messages.setdefault(int(lead_id), []).append(int(message_id))
        self.report.claimed += len(claimed)
        self.report.leads += len(messages)
        try:
            with self.engine.connect() as conn:
                planned = plan(conn, self.adapter, self.mapping, self.owners, list(messages))
            records = [p.record for p in planned if p.record is not None]
            if records:  # what is about to be written, committed first (see save_pending)
                with self.engine.begin() as conn:
                    crm_store.save_pending(
                        conn,
                        self.mapping.crm,
                        [
                            {"lead_id": p.lead_id, "pending": p.properties}
                            for p in planned
                            if p.record
                        ],
                    )
            outcomes = self.adapter.upsert(records) if records else []
        except (AuthError, RateLimited) as exc:
            delay = (
                timedelta(seconds=max(exc.retry_after or 0, 1))
                if isinstance(exc, RateLimited)
                else AUTH_RETRY
            )
            why = masked(str(exc))
            self.put_back(claimed, why, delay)
            self.report.error = why
            return False
        except CrmError as exc:
            why = masked(str(exc))
            failures = [(m, why, exc.permanent) for ids in messages.values() for m in ids]
            with self.engine.begin() as conn:
                self._failures(conn, failures, messages)
            self.report.error = why
            return False
        self.record(planned, {o.lead_id: o for o in outcomes}, messages)
        return True

    def record(
        self,
        planned: list[Planned],
        outcomes: dict[int, Outcome],
        messages: dict[int, list[int]],
    ) -> None:
        """Every lead's result, in one transaction."""
        written: list[dict[str, Any]] = []
        before: dict[int, dict[str, Any]] = {}
        sent_ids: list[int] = []
        failures: list[tuple[int, str, bool]] = []
        for item in planned:
            ids = messages.get(item.lead_id, [])
            self.report.kept += len(item.kept)
            if item.error is not None:
                failures.extend((i, item.error, True) for i in ids)
                continue
            if item.unchanged:
                sent_ids.extend(ids)
                self.report.unchanged += 1
                # What the CRM holds is leadflow's: remember it as written, or a write whose
                # answer was lost (a crash, a failed later batch) would look like a person's.
                written.append(
                    {"lead_id": item.lead_id, "crm_id": item.crm_id, "pushed": item.properties}
                )
                continue
            outcome = outcomes.get(item.lead_id)
            if outcome is None:
                outcome = Outcome(item.lead_id, ok=False, error="the CRM gave no answer for it")
            if outcome.ok:
                assert item.record is not None
                sent_ids.extend(ids)
                written.append(
                    {"lead_id": item.lead_id, "crm_id": outcome.crm_id, "pushed": item.properties}
                )
                self.report.written += 1
                self.report.created += bool(outcome.created)
            else:
                error = masked(outcome.error or "refused") + _field_of(
                    self.mapping, outcome.error or ""
                )
                failures.extend((i, error, outcome.permanent) for i in ids)
        with self.engine.begin() as conn:
            if written:
                before = crm_store.pushed(conn, self.mapping.crm, [w["lead_id"] for w in written])
                for w in written:
                    old = before.get(w["lead_id"], {})
                    w["pushed"] = {**old.get("pushed", {}), **w["pushed"]}
                    w["crm_id"] = w["crm_id"] or old.get("crm_id")
                crm_store.save_pushed(conn, self.mapping.crm, written, store.utcnow())
            outbox.mark_sent(conn, sent_ids, store.utcnow(), token=self.token)
            self._failures(conn, failures, messages)

    def _failures(
        self,
        conn: Connection,
        failures: list[tuple[int, str, bool]],
        messages: dict[int, list[int]],
    ) -> None:
        """Mark each failed message; count leads as dead (any of its messages died: a
        permanent refusal, or its budget spent) or to retry."""
        lead_of = {m: lead for lead, ids in messages.items() for m in ids}
        dead: set[int] = set()
        retried: set[int] = set()
        for message_id, error, permanent in failures:
            status = outbox.mark_failed(
                conn, message_id, error, self.now, token=self.token, permanent=permanent
            )
            (dead if status == "dead" else retried).add(lead_of.get(message_id, -1))
        self.report.dead += len(dead)
        self.report.failed += len(retried - dead)


def sync(
    engine: Engine,
    adapter: Adapter,
    mapping: CrmMapping,
    *,
    now: datetime | None = None,
    lead_ids: Sequence[int] | None = None,
    limit: int | None = None,
    claim_size: int | None = None,
    lease: timedelta = outbox.LEASE,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> SyncReport:
    """Send due ``crm_sync`` messages of ``mapping.crm`` (all, or those about ``lead_ids``;
    at most ``limit`` messages) until none is due or the CRM says stop."""
    started = time.monotonic()
    moment = now or datetime.now(UTC)
    run = _Run(
        engine, adapter, mapping, moment if moment.tzinfo else moment.replace(tzinfo=UTC), lease
    )
    # Messages a claim takes: several upsert calls' worth (a lead has a message per decision),
    # and past the bulk threshold where the adapter has one (one Bulk API job beats many
    # collection calls).
    size = claim_size or max(adapter.batch_size * 10, getattr(adapter, "bulk_threshold", 0) * 5)
    with sync_lock(engine, mapping.crm, lock_wait) as locked:
        if not locked:
            run.report.error = "another sync of this CRM is running (its messages wait for it)"
        taken = 0
        while locked and (limit is None or taken < limit):
            want = size if limit is None else min(size, limit - taken)
            claimed = run.claim(want, lead_ids)
            if claimed.empty:
                break
            taken += len(claimed)
            if not run.batch(claimed):
                break
    run.report.waiting, run.report.next_due = waiting(engine, mapping.crm)
    run.report.seconds = round(time.monotonic() - started, 3)
    usage = adapter.usage
    run.report.usage = {
        "calls": usage.calls,
        "records": usage.records,
        "throttled": usage.throttled,
        "waited_seconds": round(usage.waited_seconds, 3),
        **usage.limit,
    }
    return run.report


# --------------------------------------------------------------------------- looking


def waiting(engine: Engine, crm: str) -> tuple[int, str | None]:
    """How many ``crm_sync`` messages of ``crm`` wait (pending or failed), and when the first
    is due (minutes, UTC)."""
    table = t.outbox
    with engine.connect() as conn:
        count, first = conn.execute(
            select(func.count(), func.min(table.c.next_attempt_at)).where(
                table.c.kind == crm_store.KIND,
                table.c.recipient == crm,
                table.c.status.in_(("pending", "failed")),
            )
        ).one()
    if not count:
        return 0, None
    moment = pd.Timestamp(first)
    moment = moment.tz_localize(UTC) if moment.tzinfo is None else moment.tz_convert(UTC)
    return int(count), moment.strftime("%Y-%m-%d %H:%M UTC")


def due_leads(conn: Connection, crm: str, limit: int | None = None) -> list[int]:
    """Leads with a ``crm_sync`` message to ``crm`` waiting (pending or failed)."""
    table = t.outbox
    query = (
        select(table.c.lead_id)
        .where(
            and_(
                table.c.kind == crm_store.KIND,
                table.c.recipient == crm,
                table.c.status.in_(("pending", "failed")),
            )
        )
        .group_by(table.c.lead_id)
        .order_by(func.min(table.c.id))
    )
    if limit:
        query = query.limit(limit)
    return [int(r[0]) for r in conn.execute(query)]


def shown(name: str, value: Any) -> Any:
    """A value for a person's screen: personal fields masked."""
    if value is None or value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if name in PERSONAL:
        text_value = str(value)
        return masked(text_value) if "@" in text_value else text_value[:1] + "…"
    return value


def changes(mapping: CrmMapping, planned: list[Planned], *, examples: int = 3) -> dict[str, Any]:
    """Per mapping field: how many leads' CRM value would change, with a few examples (lead
    id, CRM value, leadflow value; personal fields masked)."""
    by_prop = {rule.to: name for name, rule in mapping.fields.items()}
    fields: dict[str, dict[str, Any]] = {}
    creates = unchanged = refused = 0
    kept: dict[str, int] = {}
    for item in planned:
        for name in item.kept:
            kept[name] = kept.get(name, 0) + 1
        if item.error:
            refused += 1
            continue
        if item.record is None:
            unchanged += 1
            continue
        if item.crm_now is None:
            creates += 1
        for prop, value in item.record.properties.items():
            if prop == mapping.id_property:
                continue
            old = (item.crm_now or {}).get(prop)
            if crm_mapping._same(old, value):
                continue
            name = by_prop.get(prop, prop)
            entry = fields.setdefault(name, {"property": prop, "changes": 0, "examples": []})
            entry["changes"] += 1
            if len(entry["examples"]) < examples:
                entry["examples"].append(
                    {"lead": item.lead_id, "crm": shown(name, old), "leadflow": shown(name, value)}
                )
    return {
        "leads": len(planned),
        "create": creates,
        "update": sum(1 for p in planned if p.record is not None and p.crm_now is not None),
        "unchanged": unchanged,
        "refused": refused,
        "refusals": sorted({p.error for p in planned if p.error})[:5],
        "fields": fields,
        "kept": kept,
    }


def dry_run(
    engine: Engine, adapter: Adapter, mapping: CrmMapping, *, limit: int | None = None
) -> dict[str, Any]:
    """What a sync would write, field by field, reading the CRM and writing nothing."""
    with engine.connect() as conn:
        ids = due_leads(conn, mapping.crm, limit)
        owners = Owners(adapter, mapping)
        planned: list[Planned] = []
        for start in range(0, len(ids), 1000):
            planned += plan(
                conn, adapter, mapping, owners, ids[start : start + 1000], read_all=True
            )
    return {"crm": mapping.crm, "dry_run": True, **changes(mapping, planned)}


def diff(
    engine: Engine, adapter: Adapter, mapping: CrmMapping, *, limit: int | None = None
) -> dict[str, Any]:
    """Drift: for every lead leadflow wrote to the CRM, the fields whose CRM value is not
    leadflow's (whoever changed it), and the records missing from the CRM."""
    with engine.connect() as conn:
        query = (
            select(t.crm_records.c.lead_id)
            .where(t.crm_records.c.crm == mapping.crm)
            .order_by(t.crm_records.c.lead_id)
        )
        if limit:
            query = query.limit(limit)
        ids = [int(r[0]) for r in conn.execute(query)]
        owners = Owners(adapter, mapping)
        fields: dict[str, dict[str, Any]] = {}
        missing = 0
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            planned = plan(conn, adapter, mapping, owners, chunk, read_all=True)
            for item in planned:
                if item.error:
                    continue
                if item.crm_now is None:
                    missing += 1
                    continue
                for name, rule in mapping.fields.items():
                    ours = item.ours.get(rule.to)
                    theirs = item.crm_now.get(rule.to)
                    if ours in (None, crm_mapping.UNLISTED) or crm_mapping._same(ours, theirs):
                        continue
                    entry = fields.setdefault(
                        name, {"property": rule.to, "drifted": 0, "examples": []}
                    )
                    entry["drifted"] += 1
                    if len(entry["examples"]) < 3:
                        entry["examples"].append(
                            {
                                "lead": item.lead_id,
                                "crm": shown(name, theirs),
                                "leadflow": shown(name, ours),
                                "policy": rule.policy,
                            }
                        )
    return {"crm": mapping.crm, "leads": len(ids), "missing_in_crm": missing, "fields": fields}
