"""The lead lifecycle: statuses, the transitions allowed between them, and the ledger.

This is the only module that writes ``leads.status``. Every change of status writes exactly
one row to ``lead_events`` in the same transaction; a transition that is not allowed raises
``IllegalTransition`` before anything is written, and a lead that is no longer in the status
the caller saw raises ``StaleTransition`` (and the transaction rolls back).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

import pandas as pd
from sqlalchemy import Connection, and_, case, insert, literal, select, update

from leadflow import store
from leadflow import tables as t
from leadflow.crm import store as crm


class Status(StrEnum):
    CAPTURED = "captured"
    ENRICHMENT_PENDING = "enrichment_pending"  # waiting for the firmographic provider
    ENRICHED = "enriched"
    MQL = "mql"
    NURTURING = "nurturing"
    ROUTED = "routed"
    ACCEPTED = "accepted"
    QUALIFIED = "qualified"  # SQL
    WON = "won"
    LOST = "lost"
    RECYCLED = "recycled"
    DISQUALIFIED = "disqualified"
    QUARANTINED = "quarantined"  # a hop's gate held the lead back; released by a person


S = Status

# from-status -> statuses it may move to. None is "not yet a lead".
ALLOWED: dict[Status | None, frozenset[Status]] = {
    None: frozenset({S.CAPTURED}),
    S.CAPTURED: frozenset({S.ENRICHED, S.ENRICHMENT_PENDING, S.DISQUALIFIED, S.QUARANTINED}),
    S.ENRICHMENT_PENDING: frozenset({S.ENRICHED, S.DISQUALIFIED, S.QUARANTINED}),
    S.ENRICHED: frozenset({S.MQL, S.NURTURING, S.DISQUALIFIED, S.QUARANTINED}),
    S.NURTURING: frozenset({S.MQL, S.DISQUALIFIED, S.QUARANTINED}),
    S.MQL: frozenset({S.ROUTED, S.NURTURING, S.DISQUALIFIED, S.QUARANTINED}),
    S.ROUTED: frozenset({S.ACCEPTED, S.MQL, S.RECYCLED, S.DISQUALIFIED}),
    S.ACCEPTED: frozenset({S.QUALIFIED, S.RECYCLED, S.DISQUALIFIED}),
    S.QUALIFIED: frozenset({S.WON, S.LOST, S.RECYCLED}),
    S.LOST: frozenset({S.RECYCLED}),
    # Back to nurture, or out for good once recycled more often than the policy allows.
    S.RECYCLED: frozenset({S.NURTURING, S.DISQUALIFIED}),
    S.WON: frozenset(),
    S.DISQUALIFIED: frozenset(),
    # Released back to the input of the hop that quarantined it.
    S.QUARANTINED: frozenset({S.CAPTURED, S.ENRICHED, S.DISQUALIFIED}),
}

# Every named set of statuses lives here, nowhere else.
# Statuses in which a rep owns the lead: rescoring must not pull these back.
OWNED = frozenset({S.ROUTED, S.ACCEPTED, S.QUALIFIED, S.WON, S.LOST})
# Statuses a lead has once it was scored: the default scope of a rescore.
SCORED = frozenset({S.MQL, S.NURTURING, S.RECYCLED} | OWNED)
# Statuses a new score may move a lead out of; in the others the score changes, the status not.
MOVABLE_BY_SCORE = frozenset({S.MQL, S.NURTURING})


class IllegalTransition(ValueError):
    """A status change the lifecycle does not allow."""


class StaleTransition(RuntimeError):
    """Some leads were no longer in the status the caller read (or no longer claimed)."""


def check(from_status: str | None, to_status: str) -> None:
    """Raise ``IllegalTransition`` unless ``from_status -> to_status`` is allowed."""
    try:
        source = None if from_status is None else Status(from_status)
        target = Status(to_status)
    except ValueError as exc:
        raise IllegalTransition(f"unknown status in {from_status!r} -> {to_status!r}") from exc
    if target not in ALLOWED[source]:
        allowed = ", ".join(sorted(ALLOWED[source])) or "nothing (terminal)"
        raise IllegalTransition(
            f"{from_status or 'new lead'} -> {to_status} is not allowed; "
            f"from {from_status or 'new lead'} a lead may move to: {allowed}"
        )


def _check_pairs(pairs: Iterable[tuple[str | None, str]]) -> None:
    for from_status, to_status in set(pairs):
        if from_status != to_status:
            check(from_status, to_status)


def _write_events(
    conn: Connection,
    lead_ids: pd.Series,
    *,
    kind: str,
    from_status: pd.Series | str | None,
    to_status: pd.Series | str | None,
    actor: str,
    reason: pd.Series | str | None,
    details: pd.Series | list | None,
    batch_id: int | None,
    flow_run_id: str | None,
    at: datetime | pd.Series,
    record_nos: pd.Series | None = None,
) -> None:
    """Append one ledger row per lead. Values shared by every row are filled in by the
    database (INSERT ... SELECT from a staged table of what varies), so only the varying
    columns cross the wire."""
    varying: dict[str, object] = {"lead_id": lead_ids.to_numpy()}
    shared: dict[str, object] = {
        "kind": kind,
        "actor": actor,
        "batch_id": batch_id,
        "flow_run_id": flow_run_id,
        "recorded_at": store.utcnow(),
    }
    for name, value in (
        ("occurred_at", at),
        ("from_status", from_status),
        ("to_status", to_status),
        ("reason", reason),
        ("details", details),
        ("record_no", record_nos),
    ):
        if isinstance(value, pd.Series):
            varying[name] = value.to_numpy()
        elif isinstance(value, list):
            varying[name] = value
        else:
            shared[name] = value
    if "record_no" in varying:
        varying["record_no"] = pd.array(varying["record_no"], dtype="Int64")
    events = t.lead_events
    frame = pd.DataFrame(varying)
    with store.staged(conn, events, frame) as stage:
        columns = [stage.c[name] for name in frame.columns] + [
            literal(value, events.c[name].type).label(name) for name, value in shared.items()
        ]
        conn.execute(insert(events).from_select([*frame.columns, *shared], select(*columns)))


def admit(
    conn: Connection,
    new_leads: pd.DataFrame,
    *,
    actor: str,
    at: datetime,
    batch_id: int | None = None,
    flow_run_id: str | None = None,
    details: list | None = None,
    record_nos: pd.Series | None = None,
) -> int:
    """Insert brand-new leads (with ids already allocated) in status ``captured``.

    Writes one ``transition`` event (none -> captured) per lead, naming the record
    (``batch_id``, ``record_nos``) that created it.
    """
    if new_leads.empty:
        return 0
    check(None, S.CAPTURED)
    rows = new_leads.copy()
    rows["status"] = S.CAPTURED.value
    rows["status_changed_at"] = pd.Timestamp(at)
    store.bulk_insert(conn, t.leads, rows)
    _write_events(
        conn,
        rows["id"],
        kind="transition",
        from_status=None,
        to_status=S.CAPTURED.value,
        actor=actor,
        reason="captured",
        details=details,
        batch_id=batch_id,
        flow_run_id=flow_run_id,
        at=at,
        record_nos=record_nos,
    )
    return len(rows)


def apply(
    conn: Connection,
    changes: pd.DataFrame,
    *,
    actor: str,
    at: datetime | pd.Series,
    claimed_by: str | None = None,
    flow_run_id: str | None = None,
    reason: str | None = None,
) -> int:
    """Move leads to new statuses and set other columns, in one set-based UPDATE.

    ``changes`` has ``id``, ``from_status`` (the status the caller read), ``to_status``
    (equal to ``from_status`` for a field-only update), optional ``reason`` and ``details``
    columns for the ledger, and any other ``leads`` columns to set. Rows whose status
    changes get one ledger event each. If ``claimed_by`` is given, only leads still claimed
    by that token are touched. ``at`` is when the moves happened: one time, or one per row
    (a Series aligned with ``changes``). Returns the number of status changes written.
    """
    if changes.empty:
        return 0
    _check_pairs(zip(changes["from_status"], changes["to_status"], strict=True))
    leads = t.leads
    ledger_columns = {"from_status", "to_status", "reason", "details"}
    field_columns = [c for c in changes.columns if c not in ledger_columns]
    stage_frame = changes[field_columns].copy()
    stage_frame["status"] = changes["to_status"].to_numpy()
    stage_frame["seen_status"] = changes["from_status"].to_numpy()
    if isinstance(at, pd.Series):
        stage_frame["status_changed_at"] = at.to_numpy()
    now = store.utcnow()
    with store.staged(conn, leads, stage_frame) as stage:
        values = {c: stage.c[c] for c in field_columns if c != "id"}
        values["status"] = stage.c.status
        changed_at = (
            stage.c.status_changed_at
            if isinstance(at, pd.Series)
            else literal(at, leads.c.status_changed_at.type)
        )
        values["status_changed_at"] = case(
            (stage.c.status != leads.c.status, changed_at),
            else_=leads.c.status_changed_at,
        )
        values["updated_at"] = literal(now, leads.c.updated_at.type)
        guard = and_(leads.c.id == stage.c.id, leads.c.status == stage.c.seen_status)
        if claimed_by is not None:
            guard = and_(guard, leads.c.claimed_by == claimed_by)
        hit = conn.execute(update(leads).values(values).where(guard)).rowcount
    if hit != len(changes):
        raise StaleTransition(
            f"{len(changes) - hit} of {len(changes)} leads were no longer in the status "
            f"read{' or no longer claimed by ' + claimed_by if claimed_by else ''}; nothing written"
        )
    moved = changes[changes["from_status"] != changes["to_status"]]
    # The CRMs hear of it in this same transaction (leadflow/crm/store.py).
    changed = set(field_columns) - {"id"} | ({"status"} if not moved.empty else set())
    when = at if isinstance(at, datetime) else None
    crm.note(conn, changes["id"], changed=changed, actor=actor, now=when, flow_run_id=flow_run_id)
    if moved.empty:
        return 0
    reasons = moved["reason"] if "reason" in moved.columns else reason
    details = moved["details"] if "details" in moved.columns else None
    if isinstance(at, pd.Series):
        at = at[(changes["from_status"] != changes["to_status"]).to_numpy()]
    _write_events(
        conn,
        moved["id"],
        kind="transition",
        from_status=moved["from_status"],
        to_status=moved["to_status"],
        actor=actor,
        reason=reasons,
        details=details,
        batch_id=None,
        flow_run_id=flow_run_id,
        at=at,
    )
    return len(moved)


def record_reassignments(
    conn: Connection,
    lead_ids: pd.Series,
    *,
    status: str,
    reasons: pd.Series,
    details: list | None,
    actor: str,
    at: datetime,
    flow_run_id: str | None = None,
) -> None:
    """One ledger row per lead whose owner changed without a status change (an SLA
    escalation): ``kind = 'reassignment'``, the status on both sides, and why."""
    if len(lead_ids) == 0:
        return
    _write_events(
        conn,
        lead_ids,
        kind="reassignment",
        from_status=status,
        to_status=status,
        actor=actor,
        reason=reasons,
        details=details,
        batch_id=None,
        flow_run_id=flow_run_id,
        at=at,
    )


def record_notes(
    conn: Connection,
    lead_ids: pd.Series,
    *,
    kind: str,
    reasons: pd.Series,
    actor: str,
    at: datetime,
    flow_run_id: str | None = None,
) -> None:
    """One ledger row per lead for something that happened to it without a status change
    (``kind = 'nurture'``: enrolled in a cadence, left it and why, finished it)."""
    if len(lead_ids) == 0:
        return
    _write_events(
        conn,
        pd.Series(lead_ids).reset_index(drop=True),
        kind=kind,
        from_status=None,
        to_status=None,
        actor=actor,
        reason=pd.Series(reasons).reset_index(drop=True),
        details=None,
        batch_id=None,
        flow_run_id=flow_run_id,
        at=at,
    )


def record_merges(
    conn: Connection,
    lead_ids: pd.Series,
    *,
    actor: str,
    at: datetime,
    details: list,
    batch_id: int | None,
    flow_run_id: str | None = None,
    record_nos: pd.Series | None = None,
) -> int:
    """One ``merge`` event per record that was merged into an existing lead."""
    if len(lead_ids) == 0:
        return 0
    _write_events(
        conn,
        lead_ids,
        kind="merge",
        from_status=None,
        to_status=None,
        actor=actor,
        reason="merged",
        details=details,
        batch_id=batch_id,
        flow_run_id=flow_run_id,
        at=at,
        record_nos=record_nos,
    )
    return len(lead_ids)
