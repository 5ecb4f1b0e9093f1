"""The inbound half of CRM sync: status and owner changes a person made in the CRM come back.

``pull`` reads the records the CRM says changed since the CRM's cursor (``source_cursors``
row ``crm:<crm>``), oldest first, in chunks of ``page_records``, and per record:

- the lead is the id property's value (leadflow's lead id, as text); a record without one
  that is a number, or naming no lead leadflow has, is ignored and counted;
- a value equal to what leadflow wrote last (``crm_records.pushed``), to what the previous
  pull read (``crm_records.pulled``) or to the lead's own status as the mapping writes it is
  no change: the same record read twice counts once;
- a status value becomes a sales activity of the disposition ``inbound.status`` maps it to
  (accept, qualify, won, lost, reject, not_now), captured by the activities capture itself
  (``leadflow/capture/activities.py``: the same gate, ledger of batches, quarantine and
  lifecycle moves as a file of activities), one batch of kind ``http`` per chunk, source
  named after the CRM. The activity's id is ``<crm>:<crm id>:status:<value>:<modified at>``,
  so a replay is the same activity; its rep is the lead's owner in leadflow (or the CRM's
  owner, when it maps to a rep); it happened at the record's modification time;
- an owner id that maps to a rep (the CRM's users by email, ``owners`` of the mapping over
  them) who is not the lead's owner, for a lead in routed, accepted or qualified, is a
  reassignment written as routing writes one: the current assignment released, a new one
  (step ``crm``), the lead's owner through the lifecycle and a ``reassignment`` ledger row,
  all of a chunk in one transaction. The next SLA check closes the old owner's timers and
  starts the new owner's (``leadflow.sla.check.close_ended``/``start_timers``).

Owner changes are written first, so a status set in the same edit is the new owner's
decision. After a chunk's writes, what was read is kept (``crm_records.pulled``) and the
cursor moves past the chunk's last record, in one transaction; a crash before that replays
the chunk, which the activity keys and the owner comparison make harmless. A chunk never
ends between two records with the same cursor (the CRM is asked for records modified
*after* it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, and_, func, select

from leadflow import lifecycle, quality, store
from leadflow import tables as t
from leadflow.capture import sources
from leadflow.capture import write as capture
from leadflow.capture.activities import ACTIVITIES
from leadflow.capture.linked import write_linked_chunk
from leadflow.capture.rules import SourceMapping
from leadflow.crm import store as crm_store
from leadflow.crm.base import Adapter, CrmError
from leadflow.crm.mapping import CrmMapping
from leadflow.crm.sync import LABEL
from leadflow.lifecycle import Status
from leadflow.quarantine import masked
from leadflow.routing.reassign import TURN as ROUTE_TURN

log = logging.getLogger(__name__)

KIND = "http"  # the capture batch kind: records that came over HTTP, not in a file
# Statuses in which an owner change in the CRM moves the lead to another rep.
REASSIGNABLE = (Status.ROUTED.value, Status.ACCEPTED.value, Status.QUALIFIED.value)
OVERLAP = timedelta(minutes=5)  # read again before the cursor (see ``overlapped``)
# Why a record (or a value of it) was left alone.
NOT_LEADFLOW = "not a leadflow lead"  # the id property is empty or not a lead id
UNKNOWN = "lead unknown"  # no lead with that id
NOT_A_REP = "owner not a rep"  # the owner is no CRM user with a rep's email
NOT_OWNED = "lead not owned"  # owner changed on a lead no rep works (status)
UNMAPPED = "status not mapped"  # a status value inbound.status does not list
# The activities mapping the pull's records are written in (columns named as the fields).
COLUMNS = ("activity_id", "email", "rep", "activity_type", "occurred_at", "reason")


@dataclass
class PullReport:
    """What one pull read and did."""

    crm: str
    read: int = 0  # records the CRM returned
    known: int = 0  # of which records of leads leadflow has
    unchanged: int = 0  # known records with no change a person made since
    status_changes: int = 0  # status values that became activities
    captured: int = 0  # activities stored
    already: int = 0  # activities stored before (a replay)
    quarantined: int = 0  # activities the gate held (quarantine, with the reasons)
    decisions: dict[str, int] = field(default_factory=dict)  # accepted, qualified, ...
    owner_changes: int = 0  # owner values naming another rep
    reassigned: int = 0  # leads given to that rep
    ignored: dict[str, int] = field(default_factory=dict)  # why -> records (or values)
    batches: list[int] = field(default_factory=list)  # capture batches written
    cursor_before: str | None = None
    cursor_after: str | None = None
    error: str | None = None  # why the pull stopped early (the CRM's error)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ignore(self, why: str, n: int = 1) -> None:
        self.ignored[why] = self.ignored.get(why, 0) + n

    def describe(self) -> str:
        label = LABEL.get(self.crm, self.crm)
        line = (
            f"{label}: {self.read} record(s) read, {self.known} of leadflow leads; "
            f"{self.status_changes} status change(s) -> activities: {self.captured} captured, "
            f"{self.already} already had, {self.quarantined} quarantined; "
            f"{self.owner_changes} owner change(s) -> {self.reassigned} reassigned"
        )
        if self.decisions:
            line += " (" + ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) + ")"
        if self.ignored:
            parts = ", ".join(f"{n} {why}" for why, n in sorted(self.ignored.items()))
            line += f"; ignored {sum(self.ignored.values())}: {parts}"
        line += f"; cursor {self.cursor_before or '(start)'} -> {self.cursor_after or '(start)'}"
        if self.error:
            line += f"; stopped: {self.error}"
        return line + f" in {self.seconds:.1f} s"


# --------------------------------------------------------------------------- helpers (pure)


def _text(value: Any) -> str | None:
    """A CRM value as text; None for empty."""
    if value is None:
        return None
    out = str(value).strip()
    return out or None


def _same(a: Any, b: Any) -> bool:
    return _text(a) == _text(b)


def lead_id_of(value: Any) -> int | None:
    """The lead id an id-property value names (None: not a positive whole number)."""
    text = _text(value)
    if text is None:
        return None
    if text.endswith(".0"):  # a number property read back as a float
        text = text[:-2]
    if not text.isdigit():
        return None
    number = int(text)
    return number if 0 < number < 2**63 else None


def overlapped(cursor: str | None) -> str | None:
    """The time to read from: ``OVERLAP`` before the cursor. A CRM's modified time is when a
    change began, and its search may show a change a little late, or move a record being
    edited while it pages: records changed just before the cursor may not have been read.
    Reading them again is harmless (compared with what was read, they are no change)."""
    if cursor is None:
        return None
    try:
        moment = pd.Timestamp(cursor)
    except ValueError:
        return cursor
    moment = moment.tz_localize(UTC) if moment.tzinfo is None else moment.tz_convert(UTC)
    return (moment - OVERLAP).strftime("%Y-%m-%dT%H:%M:%SZ")


def chunks(
    items: Iterable[tuple[dict[str, Any], str]], size: int, limit: int | None
) -> Iterator[list[tuple[dict[str, Any], str]]]:
    """``items`` in lists of ``size`` (at most ``limit`` items in all), never splitting items
    that share a cursor: the next read asks for what changed *after* the saved one."""
    chunk: list[tuple[dict[str, Any], str]] = []
    for taken, item in enumerate(items):
        full = len(chunk) >= size or (limit is not None and taken >= limit)
        if chunk and full and item[1] != chunk[-1][1]:
            yield chunk
            chunk = []
            if limit is not None and taken >= limit:
                return
        chunk.append(item)
    if chunk:
        yield chunk


def _moment(value: Any, now: datetime) -> datetime:
    """A record's modification time (UTC), never after ``now``."""
    try:
        stamp = pd.Timestamp(str(value))
    except (TypeError, ValueError):
        return now
    if pd.isna(stamp):
        return now
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return min(stamp.to_pydatetime(), now)


class CrmOwners:
    """CRM owner id -> the lower-cased email of the person: the CRM's users (read once per
    pull, only when an owner needs it), with the mapping's ``owners`` over them."""

    def __init__(self, adapter: Adapter, mapping: CrmMapping) -> None:
        self.adapter = adapter
        self.explicit = {str(v): k.lower() for k, v in mapping.owners.items()}
        self._crm: dict[str, str] | None = None

    def email(self, owner_id: str) -> str | None:
        if owner_id in self.explicit:
            return self.explicit[owner_id]
        if self._crm is None:
            self._crm = {str(v): k.lower() for k, v in self.adapter.owners().items()}
        return self._crm.get(owner_id)


# --------------------------------------------------------------------------- the store


@dataclass
class _Lead:
    id: int
    email: str | None
    external_id: str | None
    status: str
    owner_rep_id: int | None
    owner_email: str | None


@dataclass(frozen=True)
class _Rep:
    id: int
    code: str
    email: str


def _leads(conn: Connection, ids: list[int]) -> dict[int, _Lead]:
    leads, reps = t.leads, t.reps
    out: dict[int, _Lead] = {}
    for start in range(0, len(ids), 5000):
        rows = conn.execute(
            select(
                leads.c.id,
                leads.c.email,
                leads.c.external_id,
                leads.c.status,
                leads.c.owner_rep_id,
                func.lower(reps.c.email).label("owner_email"),
            )
            .select_from(leads.outerjoin(reps, reps.c.id == leads.c.owner_rep_id))
            .where(leads.c.id.in_(ids[start : start + 5000]))
        ).all()
        for r in rows:
            owner = None if r.owner_rep_id is None else int(r.owner_rep_id)
            out[int(r.id)] = _Lead(
                int(r.id), r.email, r.external_id, r.status, owner, r.owner_email
            )
    return out


def _reps(conn: Connection) -> dict[str, _Rep]:
    """Reps of the routing rules (those with a code) by lower-cased email."""
    rows = conn.execute(
        select(t.reps.c.id, t.reps.c.code, func.lower(t.reps.c.email)).where(
            t.reps.c.code.is_not(None)
        )
    ).all()
    return {email: _Rep(int(i), code, email) for i, code, email in rows}


def _holders(
    conn: Connection, ids: list[int]
) -> dict[int, list[tuple[datetime, datetime | None, str]]]:
    """Per lead, its assignments to reps: (assigned at, released at, lower-cased email)."""
    a, reps = t.assignments, t.reps
    frame = store.read_frame(
        conn,
        select(a.c.lead_id, a.c.assigned_at, a.c.released_at, func.lower(reps.c.email))
        .select_from(a.join(reps, reps.c.id == a.c.rep_id))
        .where(a.c.lead_id.in_(ids))
        .order_by(a.c.id),
    )
    out: dict[int, list[tuple[datetime, datetime | None, str]]] = {}
    for lead_id, start, end, email in frame.itertuples(index=False):
        stop = None if pd.isna(end) else end.to_pydatetime()
        out.setdefault(int(lead_id), []).append((start.to_pydatetime(), stop, email))
    return out


def _last_values(
    conn: Connection, crm: str, ids: list[int]
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Per lead: what leadflow wrote last (``crm_store.pushed``) and what the last pull read."""
    pushed = {i: v["pushed"] for i, v in crm_store.pushed(conn, crm, ids).items()}
    table = t.crm_records
    pulled: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 5000):
        rows = conn.execute(
            select(table.c.lead_id, table.c.pulled).where(
                and_(table.c.crm == crm, table.c.lead_id.in_(ids[start : start + 5000]))
            )
        ).all()
        pulled.update({int(r.lead_id): r.pulled or {} for r in rows})
    return pushed, pulled


# --------------------------------------------------------------------------- one chunk


@dataclass
class _StatusChange:
    lead_id: int
    crm_id: str
    value: str
    disposition: str
    modified_at: str
    at: datetime
    crm_owner: str | None  # the record's owner id, for a lead leadflow has no owner for


@dataclass
class _OwnerChange:
    lead_id: int
    rep: _Rep
    at: datetime


class _Pull:
    """One pull's state: the mapping's properties, the owners, the report."""

    def __init__(
        self, engine: Engine, adapter: Adapter, mapping: CrmMapping, now: datetime
    ) -> None:
        self.engine, self.adapter, self.mapping, self.now = engine, adapter, mapping, now
        self.crm = mapping.crm
        self.label = LABEL.get(self.crm, self.crm)
        status = mapping.fields.get("status")
        owner = mapping.fields.get("owner")
        self.status_prop = status.to if status else None
        self.status_values = dict(status.values or {}) if status else {}
        self.owner_prop = owner.to if owner else None
        self.inbound = dict(mapping.inbound.status)
        self.inbound_folded = {k.lower(): v for k, v in self.inbound.items()}
        self.owners = CrmOwners(adapter, mapping)
        self.report = PullReport(self.crm)
        digest = hashlib.sha256(mapping.model_dump_json().encode()).hexdigest()[:12]
        self.version = f"crm:{self.crm}:{digest}"

    def properties(self) -> list[str]:
        props = [p for p in (self.status_prop, self.owner_prop) if p]
        return list(dict.fromkeys([*props, self.mapping.id_property]))

    # ---- deciding ------------------------------------------------------------------------

    def _disposition(self, value: str) -> str | None:
        return self.inbound.get(value) or self.inbound_folded.get(value.lower())

    def decide(
        self, chunk: list[tuple[dict[str, Any], str]]
    ) -> tuple[list[_StatusChange], list[_OwnerChange], list[dict[str, Any]]]:
        """The chunk's changes, and the values to keep as read (``save_pulled`` rows)."""
        report = self.report
        report.read += len(chunk)
        named: list[tuple[dict[str, Any], int]] = []
        for record, _ in chunk:
            lead_id = lead_id_of(record.get(self.mapping.id_property))
            if lead_id is None:
                report.ignore(NOT_LEADFLOW)
            else:
                named.append((record, lead_id))
        ids = sorted({lead_id for _, lead_id in named})
        with self.engine.connect() as conn:
            leads = _leads(conn, ids)
            pushed, pulled = _last_values(conn, self.crm, ids)
            reps = _reps(conn) if self.owner_prop else {}
        statuses: list[_StatusChange] = []
        owners: dict[int, _OwnerChange] = {}
        kept: dict[int, dict[str, Any]] = {}
        for record, lead_id in named:
            lead = leads.get(lead_id)
            if lead is None:
                report.ignore(UNKNOWN)
                continue
            report.known += 1
            crm_id = str(record.get("id") or "")
            before = pulled.get(lead_id, {})
            wrote = pushed.get(lead_id, {})
            values = {p: _text(record.get(p)) for p in (self.status_prop, self.owner_prop) if p}
            at = _moment(record.get("modified_at"), self.now)
            owner_value = values.get(self.owner_prop) if self.owner_prop else None
            changed = self._owner_change(lead, owner_value, (wrote, before), reps, owners, at)
            status = self._status_change(record, lead, values, (wrote, before), owner_value, at)
            if status is not None:
                changed = True
                if isinstance(status, _StatusChange):
                    statuses.append(status)
            if not changed:
                report.unchanged += 1
            # A second read of the lead in this chunk compares with this one.
            pulled[lead_id] = {**before, **values}
            kept[lead_id] = {"lead_id": lead_id, "crm_id": crm_id or None, "pulled": values}
        return statuses, list(owners.values()), list(kept.values())

    def _owner_change(
        self,
        lead: Any,
        owner_value: str | None,
        last: tuple[dict[str, Any], dict[str, Any]],
        reps: dict[str, _Rep],
        owners: dict[int, _OwnerChange],
        at: datetime,
    ) -> bool:
        """Whether the record's owner is a change (then noted in ``owners`` when it can be
        made); ``last``: what leadflow wrote and what the last pull read."""
        report, lead_id = self.report, int(lead.id)
        if not self.owner_prop or owner_value is None:
            return False
        if any(_same(owner_value, values.get(self.owner_prop)) for values in last):
            return False
        rep = self._rep_of(owner_value, reps)
        if rep is None:
            report.ignore(NOT_A_REP)
            return True
        current = owners[lead_id].rep.id if lead_id in owners else lead.owner_rep_id
        if rep.id == current:
            return False
        if lead.status not in REASSIGNABLE:
            report.ignore(NOT_OWNED)
        else:
            report.owner_changes += 1
            owners[lead_id] = _OwnerChange(lead_id, rep, at)
        return True

    def _status_change(
        self,
        record: dict[str, Any],
        lead: Any,
        values: dict[str, Any],
        last: tuple[dict[str, Any], dict[str, Any]],
        owner_value: str | None,
        at: datetime,
    ) -> _StatusChange | bool | None:
        """The record's status as a change: a ``_StatusChange``, True (a change that maps to
        no disposition), or None (not a change)."""
        value = values.get(self.status_prop) if self.status_prop else None
        if not self.status_prop or value is None:
            return None
        if any(_same(value, written.get(self.status_prop)) for written in last):
            return None
        if _same(value, self.status_values.get(lead.status)):
            return None
        disposition = self._disposition(value)
        if disposition is None:
            self.report.ignore(UNMAPPED)
            return True
        self.report.status_changes += 1
        return _StatusChange(
            int(lead.id),
            str(record.get("id") or ""),
            value,
            disposition,
            str(record.get("modified_at") or at.isoformat()),
            at,
            owner_value,
        )

    def _rep_of(self, owner_id: str, reps: dict[str, _Rep]) -> _Rep | None:
        email = self.owners.email(owner_id)
        rep = reps.get(email) if email else None
        if rep is None:
            log.debug(
                "%s owner %s (%s) is not a rep", self.label, owner_id, masked(email or "unknown")
            )
        return rep

    # ---- writing -------------------------------------------------------------------------

    def reassign(self, changes: list[_OwnerChange]) -> None:
        """The owner changes, in one transaction, in the lock order of ``hold_leads``:
        capture's turn, routing's, then the leads' rows (read again under the lock)."""
        if not changes:
            return
        actor = f"crm:{self.crm}"
        ids = sorted(c.lead_id for c in changes)
        leads = t.leads
        with self.engine.begin() as conn:
            store.serialize_writers(conn, "capture")
            store.serialize_writers(conn, ROUTE_TURN)
            query = select(leads.c.id, leads.c.status, leads.c.owner_rep_id).where(
                leads.c.id.in_(ids)
            )
            if store.is_postgres(conn):
                query = query.order_by(leads.c.id).with_for_update(key_share=True, of=leads)
            now_rows = {int(r.id): r for r in conn.execute(query)}
            todo = [
                c
                for c in changes
                if c.lead_id in now_rows
                and now_rows[c.lead_id].status in REASSIGNABLE
                and now_rows[c.lead_id].owner_rep_id != c.rep.id
            ]
            if not todo:
                return
            self._write_reassignments(conn, todo, now_rows, actor)
        self.report.reassigned += len(todo)

    def _write_reassignments(
        self, conn: Any, todo: list[_OwnerChange], now_rows: dict[int, Any], actor: str
    ) -> None:
        """Release the open assignments, write the new ones, the owners and the ledger."""
        a = t.assignments
        open_rows = conn.execute(
            select(a.c.id, a.c.lead_id, a.c.rep_code).where(
                a.c.lead_id.in_([c.lead_id for c in todo]), a.c.released_at.is_(None)
            )
        ).all()
        was = {int(r.lead_id): r.rep_code for r in open_rows}
        at = {c.lead_id: c.at for c in todo}
        if open_rows:
            store.update_from_frame(
                conn,
                a,
                pd.DataFrame(
                    {
                        "id": [int(r.id) for r in open_rows],
                        "released_at": pd.to_datetime(
                            [at[int(r.lead_id)] for r in open_rows], utc=True
                        ),
                        "released_reason": f"owner changed in {self.label} by a person",
                    }
                ),
            )
        frame = pd.DataFrame(
            {
                "lead_id": [c.lead_id for c in todo],
                "rep_id": [c.rep.id for c in todo],
                "rep_code": [c.rep.code for c in todo],
                "step": "crm",
                "pool": None,
                "rule": None,
                "version": f"crm:{self.crm}",
                "reason": f"owner set in {self.label}",
                "candidates": "{}",
                "assigned_at": pd.to_datetime([c.at for c in todo], utc=True),
                "flow_run_id": None,
                "status": [now_rows[c.lead_id].status for c in todo],
            }
        )
        store.bulk_insert(conn, a, frame.drop(columns=["status"]))
        lifecycle.apply(
            conn,
            pd.DataFrame(
                {
                    "id": frame["lead_id"],
                    "from_status": frame["status"],
                    "to_status": frame["status"],
                    "owner_rep_id": frame["rep_id"],
                }
            ),
            actor=actor,
            at=frame["assigned_at"],
        )
        for status, group in frame.groupby("status", sort=True):
            group = group.reset_index(drop=True)
            lifecycle.record_reassignments(
                conn,
                group["lead_id"],
                status=str(status),
                reasons=pd.Series(
                    [
                        f"owner changed in {self.label} by a person: "
                        f"{was.get(int(i)) or 'nobody'} -> {code}"
                        for i, code in zip(group["lead_id"], group["rep_code"], strict=True)
                    ]
                ),
                details=[
                    json.dumps({"to": code, "step": "crm", "from": was.get(int(i))})
                    for i, code in zip(group["lead_id"], group["rep_code"], strict=True)
                ],
                actor=actor,
                at=group["assigned_at"],  # one time per lead
            )

    def capture(self, changes: list[_StatusChange], after: str) -> None:
        """The status changes as one capture batch of activities (the activities capture's
        own gate, quarantine and lifecycle moves)."""
        if not changes:
            return
        pages = self._pages(changes, after)
        self._write_pages(pages, after, len(changes))

    def _pages(
        self, changes: list[_StatusChange], after: str
    ) -> list[tuple[str | None, sources.ApiPage]]:
        """The activity records, one page per lead namespace (leads known by email: None)."""
        ids = sorted({c.lead_id for c in changes})
        with self.engine.connect() as conn:
            leads = _leads(conn, ids)  # owners as they are after this chunk's reassignments
            reps = _reps(conn)
            held = _holders(conn, ids)
        groups: dict[str | None, list[dict[str, Any]]] = {}
        for change in changes:
            lead = leads[change.lead_id]
            # Who held the lead when the person set the status (a later owner did not set
            # it), else its owner now, else the CRM's owner when that is a rep.
            rep = next(
                (
                    email
                    for start, end, email in held.get(change.lead_id, [])
                    if start <= change.at and (end is None or change.at < end)
                ),
                lead.owner_email,
            )
            if rep is None and change.crm_owner:
                email = self.owners.email(change.crm_owner)
                rep = email if email in reps else None
            row: dict[str, Any] = {
                "activity_id": f"{change.crm_id}:status:{change.value}:{change.modified_at}",
                "rep": rep,
                "activity_type": change.disposition,
                "occurred_at": change.at.isoformat(),
                "reason": f"set to {change.value} in {self.label}",
                "crm_id": change.crm_id,
                "crm_value": change.value,
            }
            if lead.email:
                groups.setdefault(None, []).append({"email": lead.email, **row})
            else:  # the lead is known by its namespaced external id only
                space, _, own = str(lead.external_id).partition(":")
                groups.setdefault(space, []).append({"external_id": own, **row})
        return [
            (space, sources.ApiPage(uri=self._uri(after), body=_body(records), records=records))
            for space, records in sorted(groups.items(), key=lambda g: g[0] or "")
        ]

    def _write_pages(
        self, pages: list[tuple[str | None, sources.ApiPage]], after: str, changes: int
    ) -> None:
        """The pages as one capture batch (a replay of a batch captured before: nothing)."""
        digest = hashlib.sha256(b"".join(p.body for _, p in pages)).hexdigest()
        engine = self.engine
        with capture.content_lock(
            engine, source=self.crm, target="activities", content_hash=digest
        ):
            opened = capture.open_batch(
                engine,
                source=self.crm,
                target="activities",
                kind=KIND,
                uri=self._uri(after),
                content_hash=digest,
                size=sum(len(p.body) for _, p in pages),
                header=None,
                mapping_version=self.version,
                flow_run_id=None,
            )
            self.report.batches.append(opened.batch_id)
            if opened.earlier is not None:  # this very chunk was captured: a replay
                self.report.already += changes
                return
            status = "failed" if opened.rejected_before else "complete"
            spaces: dict[int, str | None] = {}
            numbered = []
            for no, (space, page) in enumerate(pages, 1):
                chunk = sources.page_chunk(page)
                chunk.chunk_no = no
                spaces[no] = space
                numbered.append(chunk)
                if no in opened.committed:  # a run that died committed it: a replay
                    self.report.already += len(page.records)
            for chunk in capture.skip_committed(numbered, opened.committed):
                space = spaces[chunk.chunk_no]
                try:
                    outcome = write_linked_chunk(
                        engine,
                        ACTIVITIES,
                        batch_id=opened.batch_id,
                        chunk=chunk,
                        mapping=self._source_mapping(space),
                        source=self.crm,
                        now=self.now,
                        max_quarantine_rate=1.0,
                    )
                except quality.GateFailed as failure:
                    # Every record of the chunk failed its row checks: all quarantined.
                    status = "failed"
                    self.report.quarantined += failure.result.evaluated
                    continue
                self.report.captured += outcome.inserted
                self.report.already += outcome.merged
                self.report.quarantined += outcome.quarantined
                for name, n in outcome.effects.items():
                    self.report.decisions[name] = self.report.decisions.get(name, 0) + n
            capture.close_batch(engine, opened.batch_id, status=status)

    def _uri(self, after: str) -> str:
        return f"crm:{self.crm} changed up to {after}"

    def _source_mapping(self, space: str | None) -> SourceMapping:
        columns = {c: c for c in COLUMNS}
        if space is None:
            return SourceMapping(source=self.crm, target="activities", columns=columns)
        columns.pop("email")
        return SourceMapping(
            source=self.crm,
            target="activities",
            columns=columns,
            external_id="external_id",
            external_id_namespace=space,
        )

    def keep(self, rows: list[dict[str, Any]], after: str) -> None:
        """What was read, and the cursor past it: after the chunk's writes."""
        with self.engine.begin() as conn:
            crm_store.save_pulled(conn, self.crm, rows, self.now)
            crm_store.save_cursor(conn, self.crm, after)
        self.report.cursor_after = after


def _body(records: list[dict[str, Any]]) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) for r in records]
    return ("\n".join(lines) + "\n").encode()


# --------------------------------------------------------------------------- the pull


def pull(
    engine: Engine,
    adapter: Adapter,
    mapping: CrmMapping,
    *,
    now: datetime | None = None,
    page_records: int = 500,
    limit: int | None = None,
) -> PullReport:
    """Bring the status and owner changes people made in ``mapping.crm`` since its cursor
    into leadflow (at most ``limit`` records, in chunks of ``page_records``)."""
    started = time.monotonic()
    moment = now or datetime.now(UTC)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    run = _Pull(engine, adapter, mapping, moment)
    report = run.report
    with engine.connect() as conn:
        report.cursor_before = report.cursor_after = crm_store.cursor(conn, mapping.crm)
    try:
        since = overlapped(report.cursor_before)
        records = adapter.changed_since(since, run.properties())
        for chunk in chunks(records, max(1, page_records), limit):
            after = chunk[-1][1]
            statuses, owners, kept = run.decide(chunk)
            run.reassign(owners)
            run.capture(statuses, after)
            run.keep(kept, after)
    except CrmError as exc:
        report.error = str(exc)
        log.warning("%s pull stopped: %s", run.label, masked(exc))
    report.seconds = round(time.monotonic() - started, 3)
    log.info("%s", masked(report.describe()))
    return report
