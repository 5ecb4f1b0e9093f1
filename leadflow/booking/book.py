"""The booking's writes: book, reschedule and cancel, each one transaction.

Booking takes capture's turn (an activity is written: the SLA check's watermark must never
pass an uncommitted one) and routing's (a booking may reassign), then locks the lead's row
(the lock order of ``leadflow.sla.check.hold_leads``), and inserts the meeting first: the
partial unique indexes of ``meetings`` refuse a second live meeting of the rep at that start
(``Taken``) or of the link (a replayed form: the meeting already booked is returned). Then the
``meeting_booked`` activity (it meets the SLA clocks that count it), the reassignment when
the slot was another rep's of the pool, the ledger note, and the outbox rows (ICS to both, the
CalDAV write) — all or nothing.

A cancel voids the ``meeting_booked`` activity, reopens the SLA clocks it met, frees the slot
(the index covers live meetings only) and sends the cancellations; a reschedule moves the
meeting (the same index guards the new start) and sends the update with the next SEQUENCE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Connection, select, update
from sqlalchemy.exc import IntegrityError

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.booking import messages, tokens
from leadflow.booking import store as booking_store
from leadflow.booking.slots import Slot
from leadflow.booking.store import BOOKABLE, Lead, Link, Meeting, RepRow
from leadflow.outbox import store as outbox

ACTOR = "booking"
ROUTE_TURN = "leadflow.route"  # routing's writer turn (leadflow.routing.reassign.TURN)


class Taken(Exception):
    """The slot was booked by someone else first (or is no longer free)."""


class NotBookable(Exception):
    """The lead has no owner to meet any more (recycled, disqualified, won, lost)."""


@dataclass(frozen=True)
class Booked:
    meeting: Meeting
    replayed: bool  # the link already had this meeting: nothing new was written
    reassigned_from: str | None = None


def _lock_lead(conn: Connection, lead_id: int) -> Any:
    leads = t.leads
    query = select(leads.c.id, leads.c.status, leads.c.owner_rep_id).where(
        leads.c.id == int(lead_id)
    )
    if store.is_postgres(conn):
        query = query.with_for_update(key_share=True, of=leads)
    return conn.execute(query).first()


def _insert_meeting(
    conn: Connection, link: Link, slot: Slot, rep: RepRow, lead_zone: str, busy_from: str, now
) -> Meeting:
    manage_id = tokens.new_id()
    values = {
        "lead_id": link.lead_id,
        "rep_id": rep.id,
        "rep_code": rep.rep.id,
        "starts_at": slot.start,
        "ends_at": slot.end,
        "status": "booked",
        "link_id": link.id,
        "manage_id": manage_id,
        "uid": f"{tokens.new_id()}@leadflow",  # its own: nothing of the manage link in it
        "sequence": 0,
        "lead_zone": lead_zone,
        "busy_from": busy_from,
        "booked_at": now,
    }
    conn.execute(t.meetings.insert().values(**values))
    found = booking_store.meeting_by_manage_id(conn, manage_id)
    assert found is not None
    return found


def _activity(
    conn: Connection, meeting: Meeting, now: datetime, kind: str, key: str, **fields: Any
) -> int:
    """One activity of the meeting's lead and rep (source ``booking-page``); its id."""
    acts = t.activities
    conn.execute(
        acts.insert().values(
            lead_id=meeting.lead_id,
            rep_id=meeting.rep_id,
            activity_type=kind,
            occurred_at=now,
            automated=False,
            source="booking-page",
            activity_key=key,
            recorded_at=now,
            **fields,
        )
    )
    return int(conn.execute(select(acts.c.id).where(acts.c.activity_key == key)).scalar_one())


def _booked_activity(conn: Connection, meeting: Meeting, now: datetime) -> int:
    """The meeting's ``meeting_booked`` activity (what the SLA clocks count), linked to it."""
    activity_id = _activity(
        conn,
        meeting,
        now,
        "meeting_booked",
        f"booking:{meeting.id}",
        properties={"meeting": meeting.id, "starts_at": meeting.starts_at.isoformat()},
    )
    conn.execute(
        update(t.meetings).where(t.meetings.c.id == meeting.id).values(activity_id=activity_id)
    )
    return activity_id


def _note(conn: Connection, lead_id: int, text: str, now: datetime) -> None:
    """One ``booking`` row in the lead's ledger (booked, moved, cancelled)."""
    lifecycle.record_notes(
        conn, pd.Series([lead_id]), kind="booking", reasons=pd.Series([text]), actor=ACTOR, at=now
    )


def _reassign(
    conn: Connection, lead: Lead, status: str, was: RepRow | None, to: RepRow, why: str, now
) -> None:
    """The lead to the pool's rep whose slot it booked: the open assignment released, a new
    ``booking`` assignment, the owner through the lifecycle, a ``reassignment`` ledger row."""
    a = t.assignments
    because = f"booked a first meeting with {to.rep.id}: {why}"
    conn.execute(
        update(a)
        .where(a.c.lead_id == lead.id, a.c.released_at.is_(None))
        .values(released_at=now, released_reason=because)
    )
    conn.execute(
        a.insert().values(
            lead_id=lead.id,
            rep_id=to.id,
            rep_code=to.rep.id,
            step="booking",
            pool=lead.pool,
            rule=None,
            version="booking",
            reason=because,
            candidates={},
            assigned_at=now,
        )
    )
    frame = pd.DataFrame(
        {"id": [lead.id], "from_status": [status], "to_status": [status], "owner_rep_id": [to.id]}
    )
    lifecycle.apply(conn, frame, actor=ACTOR, at=now)
    lifecycle.record_reassignments(
        conn,
        pd.Series([lead.id]),
        status=status,
        reasons=pd.Series([f"{because} ({was.rep.id if was else 'nobody'} -> {to.rep.id})"]),
        details=[json.dumps({"to": to.rep.id, "step": "booking", "from": was and was.rep.id})],
        actor=ACTOR,
        at=now,
    )


@dataclass(frozen=True)
class Request:
    """What a booking post asks for, as the page offered it."""

    link: Link
    lead: Lead
    slot: Slot
    rep: RepRow  # the slot's rep
    owner: RepRow | None  # the lead's owner when the page was shown
    lead_zone: str
    busy_from: str  # caldav | leadflow
    why_pool: str | None  # the slot is a pool rep's: why the owner's were not offered
    to_calendar: bool  # the rep has a CalDAV calendar to write the event to


def book(conn: Connection, request: Request, now: datetime) -> Booked:
    """Book ``request`` (see the module's docstring). Raises ``Taken`` or ``NotBookable``."""
    store.serialize_writers(conn, "capture")
    if request.why_pool is not None:  # it may reassign: routing's turn too (its lock order)
        store.serialize_writers(conn, ROUTE_TURN)
    row = _lock_lead(conn, request.lead.id)
    if row is None or row.status not in BOOKABLE:
        raise NotBookable(request.lead.id)
    existing = booking_store.live_meeting_of_link(conn, request.link.id)
    if existing is not None:
        return Booked(existing, replayed=True)
    owner_now = None if row.owner_rep_id is None else int(row.owner_rep_id)
    if request.rep.id != owner_now and (request.why_pool is None or row.status != "routed"):
        # The owner changed since the page was shown, or the lead was accepted meanwhile (a
        # rep working the lead keeps it, however full their calendar).
        raise Taken("the lead changed owner or was accepted since the page was shown")
    try:
        with conn.begin_nested():
            meeting = _insert_meeting(
                conn,
                request.link,
                request.slot,
                request.rep,
                request.lead_zone,
                request.busy_from,
                now,
            )
    except IntegrityError:
        again = booking_store.live_meeting_of_link(conn, request.link.id)
        if again is not None:
            return Booked(again, replayed=True)
        raise Taken(request.slot.key) from None
    _booked_activity(conn, meeting, now)
    moved_from = None
    if request.rep.id != owner_now:
        _reassign(
            conn, request.lead, row.status, request.owner, request.rep, request.why_pool or "", now
        )
        moved_from = request.owner.rep.id if request.owner else None
        conn.execute(
            update(t.meetings)
            .where(t.meetings.c.id == meeting.id)
            .values(reassigned_from=moved_from)
        )
    when = meeting.starts_at.strftime("%Y-%m-%dT%H:%MZ")
    _note(conn, request.lead.id, f"meeting booked with {request.rep.rep.id} for {when}", now)
    _send(
        conn,
        meeting,
        request.rep,
        request.lead,
        request.lead_zone,
        now,
        to_calendar=request.to_calendar,
    )
    fresh = booking_store.meeting_by_manage_id(conn, meeting.manage_id)
    assert fresh is not None
    return Booked(fresh, replayed=False, reassigned_from=moved_from)


def _send(
    conn, meeting, rep: RepRow, lead: Lead, lead_zone: str, now, *, to_calendar, cancelled=False
) -> None:
    from zoneinfo import ZoneInfo

    rows = messages.meeting_messages(
        meeting,
        rep.rep,
        lead,
        ZoneInfo(lead_zone),
        now,
        manage_url=tokens.manage_url(tokens.manage_token(meeting.manage_id)),
        cancelled=cancelled,
        to_calendar=to_calendar,
    )
    outbox.enqueue(conn, pd.DataFrame(rows), now=now)


def cancel(
    conn: Connection,
    manage_id: str,
    rep: RepRow,
    lead: Lead,
    now: datetime,
    *,
    to_calendar: bool,
    reason: str = "cancelled by the lead",
) -> Meeting | None:
    """Cancel the live meeting ``manage_id``: None when it is not live (already cancelled)."""
    store.serialize_writers(conn, "capture")
    meeting = booking_store.meeting_by_manage_id(conn, manage_id, for_update=True)
    if meeting is None or meeting.status != "booked":
        return None
    m = t.meetings
    conn.execute(
        update(m)
        .where(m.c.id == meeting.id)
        .values(
            status="cancelled", cancelled_at=now, cancel_reason=reason, sequence=m.c.sequence + 1
        )
    )
    if meeting.activity_id is not None:
        reopen(conn, meeting.activity_id, now)
    _activity(
        conn,
        meeting,
        now,
        "meeting_cancelled",
        f"booking-cancel:{meeting.id}",
        reason=reason,
        properties={"meeting": meeting.id},
    )
    _note(conn, meeting.lead_id, f"meeting with {meeting.rep_code} cancelled: {reason}", now)
    done = booking_store.meeting_by_manage_id(conn, manage_id)
    assert done is not None
    _send(
        conn,
        done,
        rep,
        lead,
        meeting.lead_zone or rep.rep.timezone,
        now,
        to_calendar=to_calendar,
        cancelled=True,
    )
    return done


def reopen(conn: Connection, activity_id: int, now: datetime) -> None:
    """Void the ``meeting_booked`` activity and reopen the SLA clocks it met: a clock it
    closed is open again, one closed otherwise since (reassigned, the lead left) stays
    closed; and the SLA check's watermark goes back to just before the activity, so its
    next run meets each reopened clock with the earliest genuine activity still counting
    (a call made after the booking was skipped then: the clock was met)."""
    from leadflow.sla import store as sla_store

    acts, timers = t.activities, t.sla_timers
    conn.execute(update(acts).where(acts.c.id == activity_id).values(voided_at=now))
    unmet = {"met_at": None, "met_by": None, "business_minutes": None}
    conn.execute(
        update(timers)
        .where(timers.c.met_by == activity_id, timers.c.closed_reason == "met")
        .values(**unmet, closed_at=None, closed_reason=None)
    )
    conn.execute(update(timers).where(timers.c.met_by == activity_id).values(**unmet))
    sla_store.rewind_watermark(conn, activity_id)


def reschedule(
    conn: Connection,
    manage_id: str,
    slot: Slot,
    rep: RepRow,
    lead: Lead,
    now: datetime,
    *,
    to_calendar: bool,
) -> Meeting:
    """Move the live meeting to ``slot`` (the same rep). Raises ``Taken``, or ``NotBookable``
    when the meeting is no longer live."""
    meeting = booking_store.meeting_by_manage_id(conn, manage_id, for_update=True)
    if meeting is None or meeting.status != "booked":
        raise NotBookable(lead.id)
    m = t.meetings
    try:
        with conn.begin_nested():
            conn.execute(
                update(m)
                .where(m.c.id == meeting.id)
                .values(starts_at=slot.start, ends_at=slot.end, sequence=m.c.sequence + 1)
            )
    except IntegrityError:
        raise Taken(slot.key) from None
    moved = booking_store.meeting_by_manage_id(conn, manage_id)
    assert moved is not None
    when = slot.start.strftime("%Y-%m-%dT%H:%MZ")
    _note(conn, meeting.lead_id, f"meeting with {meeting.rep_code} moved to {when}", now)
    _send(
        conn, moved, rep, lead, meeting.lead_zone or rep.rep.timezone, now, to_calendar=to_calendar
    )
    return moved
