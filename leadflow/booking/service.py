"""What the booking pages call (``app/web.py``): read a link, offer slots, book, reschedule,
cancel. Every answer is a plain value the page renders; nothing here raises for a lead's
input, and a CalDAV server that is down only marks the slots as unchecked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from leadflow import store
from leadflow.booking import book as writes
from leadflow.booking import rules as booking_rules
from leadflow.booking import slots as offers
from leadflow.booking import store as booking_store
from leadflow.booking import tokens
from leadflow.booking.store import BOOKABLE, Lead, Link, Meeting, RepRow
from leadflow.calendars import Calendars, CalendarUnavailable
from leadflow.rules.units import check_time_zone

log = logging.getLogger(__name__)

LOOK_AHEAD = timedelta(days=60)  # how far ahead booked meetings and busy times are read
ZONE_FIELDS = ("timezone", "time_zone", "tz")  # a form's own time zone field (attributes)


def _utc(moment: datetime | None) -> datetime:
    moment = moment or datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _zone(name: Any) -> str | None:
    text = str(name).strip() if name else ""
    if not text or len(text) > 64:
        return None
    try:
        return check_time_zone(text)
    except (ValueError, OSError):  # OSError: a name the file system refuses (too long)
        return None


GRACE = timedelta(minutes=10)  # a slot shown stays bookable this long after the page


def _nobody(lead: Lead) -> Any:
    """A rep with no time, standing in for an owner the booking cannot offer."""
    from leadflow.routing.rules import Rep

    return Rep(id="owner", name="", email="owner@invalid.example", working_hours={})


def lead_zone(lead: Lead, owner: RepRow | None, asked: str | None = None) -> str:
    """The zone the lead sees times in: the one it picked on the page, else its form's, else
    its country's main zone (enrichment's ``timezone``, else the country), else the owner's."""
    from leadflow.enrich.hop import zone_of_country

    for candidate in (
        asked,
        *(lead.attributes.get(name) for name in ZONE_FIELDS),
        lead.timezone,
        zone_of_country(lead.country),
    ):
        if zone := _zone(candidate):
            return zone
    return owner.rep.timezone if owner else "UTC"


@dataclass
class View:
    """A booking page: the lead's offer, or its live meeting."""

    token: str
    lead: Lead
    zone: str
    owner: RepRow | None
    offer: offers.Offer | None = None
    meeting: Meeting | None = None
    reps: dict[str, RepRow] = field(default_factory=dict)
    unchecked: bool = False  # a configured calendar could not be read
    former: Meeting | None = None  # a live meeting with the lead's former owner

    def first_name(self, code: str) -> str:
        row = self.reps.get(code)
        return (row.rep.name.split(" ")[0] or code) if row else "your contact"

    def days(self) -> list[tuple[date, list[offers.Slot]]]:
        return offers.by_day(self.offer.slots if self.offer else [], ZoneInfo(self.zone))


@dataclass
class Outcome:
    """What a post did: ``booked`` (``meeting``), ``taken`` (``view``: the next slots),
    ``closed`` (the lead has no owner to meet), ``forbidden`` (a bad token or form)."""

    kind: str
    view: View | None = None
    meeting: Meeting | None = None
    replayed: bool = False


class Booking:
    """The booking pages' logic over one database and the reps' calendars."""

    def __init__(
        self,
        database_url: str | None = None,
        calendars: Calendars | None = None,
        rules: booking_rules.BookingRules | None = None,
    ) -> None:
        self.engine: Engine = store.get_engine(database_url)
        self.calendars = calendars or Calendars(None)
        self._rules = rules

    @property
    def rules(self) -> booking_rules.BookingRules:
        return self._rules or booking_rules.current()

    # ----------------------------------------------------------------------- reading

    def _link(self, token: str, now: datetime) -> Link | None:
        token_id = tokens.read_book_token(token, now)
        if token_id is None:
            return None
        with self.engine.connect() as conn:
            found = booking_store.link(conn, token_id)
        return found if found is not None and found.expires_at > now else None

    def busy(
        self, reps: list[RepRow], now: datetime
    ) -> tuple[dict[str, list[tuple[datetime, datetime]]], list[str]]:
        """Per rep code, what is taken: meetings booked here, and the rep's CalDAV busy
        times when a calendar is configured (codes whose calendar could not be read, apart)."""
        end = now + LOOK_AHEAD
        with self.engine.connect() as conn:
            booked = booking_store.booked(conn, [r.id for r in reps], now, end)
        busy: dict[str, list[tuple[datetime, datetime]]] = {}
        unread: list[str] = []
        for row in reps:
            taken = list(booked.get(row.id, []))
            if self.calendars.has(row.rep.id):
                try:
                    taken += self.calendars.busy(row.rep.id, now, end, tz=row.rep.timezone)
                except CalendarUnavailable as exc:
                    log.warning("booking: calendar of %s not read: %s", row.rep.id, exc)
                    unread.append(row.rep.id)
            busy[row.rep.id] = taken
        return busy, unread

    def offer_for(
        self, lead: Lead, owner: RepRow | None, reps: dict[str, RepRow], now: datetime
    ) -> tuple[offers.Offer, list[str]]:
        """The owner's slots, or (a lead no rep has accepted yet) the pool's, with the
        calendars not read. An owner whose stored row cannot be read offers nothing itself."""
        pool = booking_store.pool_members(reps, lead.pool) if lead.status == "routed" else []
        pool_rows = [reps[r.id] for r in pool if r.id in reps]
        busy, unread = self.busy([owner] if owner else [], now)
        stand_in = owner.rep if owner else _nobody(lead)
        offer = offers.offer(stand_in, [], busy, now, self.rules)
        if not offer.slots and pool_rows and self.rules.pool_when_no_slot:
            more, unread_pool = self.busy(pool_rows, now)
            busy.update(more)
            unread += unread_pool
            offer = offers.offer(stand_in, pool, busy, now, self.rules, lead.pool)
        if owner is None:
            offer.why_pool = "the lead has no owner whose time can be read"
        offer.unread = unread
        return offer, unread

    def view(self, token: str, zone: str | None = None, now: datetime | None = None) -> View | None:
        """The page for ``token``: None for a token that is wrong, expired or unknown."""
        now = _utc(now)
        link = self._link(token, now)
        if link is None:
            return None
        return self._view(token, link, zone, now)

    def _view(self, token: str, link: Link, zone: str | None, now: datetime) -> View:
        with self.engine.connect() as conn:
            lead = booking_store.lead(conn, link.lead_id)
            stored = booking_store.reps(conn)
            meeting = booking_store.live_meeting_of_link(conn, link.id)
        assert lead is not None  # a link's lead is never deleted (foreign key)
        reps = stored
        by_id = {row.id: row for row in reps.values()}
        owner = by_id.get(lead.owner_id) if lead.owner_id is not None else None
        view = View(token, lead, lead_zone(lead, owner, zone), owner, reps=stored)
        if meeting is not None and (meeting.rep_id == lead.owner_id or lead.status not in BOOKABLE):
            view.meeting = meeting
            return view
        view.former = meeting  # a meeting with an owner the lead no longer has: booking ends it
        if lead.status not in BOOKABLE:
            return view
        view.offer, unread = self.offer_for(lead, owner, reps, now)
        view.unchecked = bool(unread)
        return view

    # ----------------------------------------------------------------------- booking

    def book(
        self,
        token: str,
        slot_key: str,
        form: str | None,
        zone: str | None = None,
        now: datetime | None = None,
    ) -> Outcome:
        """Book the slot ``slot_key`` (``<rep>@<unix start>``) from the page of ``token``."""
        now = _utc(now)
        link = self._link(token, now)
        if link is None or not tokens.form_ok(token, form):
            return Outcome("forbidden")
        view = self._view(token, link, zone, now)
        if view.meeting is not None:
            return Outcome("booked", view, view.meeting, replayed=True)
        if view.offer is None:
            return Outcome("closed", view)
        slot = view.offer.find(slot_key) or self.free_slot(view, slot_key, now)
        if slot is None:
            return Outcome("taken", view)
        request = writes.Request(
            link=link,
            lead=view.lead,
            slot=slot,
            rep=view.reps[slot.rep],
            owner=view.owner,
            lead_zone=view.zone,
            busy_from="leadflow"
            if slot.rep in view.offer.unread
            else "caldav"
            if self.calendars.has(slot.rep)
            else "leadflow",
            why_pool=None if slot.rep == view.offer.owner else view.offer.why_pool,
            to_calendar=self.calendars.has(slot.rep),
        )
        try:
            if view.former is not None:  # the meeting with the lead's former owner ends
                self._end_former(view, now)
            with self.engine.begin() as conn:
                done = writes.book(conn, request, now)
        except writes.Taken:
            return Outcome("taken", self._view(token, link, zone, now))
        except writes.NotBookable:
            return Outcome("closed", self._view(token, link, zone, now))
        except IntegrityError:  # SQLite: the other writer's insert won the race
            return Outcome("taken", self._view(token, link, zone, now))
        return Outcome("booked", view, done.meeting, replayed=done.replayed)

    def _end_former(self, view: View, now: datetime) -> None:
        """Cancel the lead's live meeting with a rep who no longer owns it (reassigned by an
        SLA escalation or in the CRM since it booked), before it books its new owner."""
        former = view.former
        rep = next((row for row in view.reps.values() if row.id == former.rep_id), None)
        if rep is None:
            return
        with self.engine.begin() as conn:
            writes.cancel(
                conn,
                former.manage_id,
                rep,
                view.lead,
                now,
                to_calendar=self.calendars.has(rep.rep.id),
                reason="the lead has a new owner",
            )

    def free_slot(self, view: View, slot_key: str, now: datetime) -> offers.Slot | None:
        """A free slot the page did not show (a day shows a few of its free slots, and a
        booking since may have spread them differently), of a rep the offer allows."""
        parsed = offers.parse_key(slot_key)
        if view.offer is None or parsed is None or parsed[0] not in view.offer.reps:
            return None
        row = view.reps.get(parsed[0])
        if row is None:
            return None
        busy, _ = self.busy([row], now)
        # From GRACE ago: a slot the page showed a few minutes back is still bookable.
        free = offers.free_slots(row.rep, now - GRACE, self.rules, busy.get(row.rep.id, ()))
        return next((slot for slot in free if slot.key == slot_key and slot.start > now), None)

    # ----------------------------------------------------------------------- managing

    def managed(self, manage_token: str) -> tuple[Meeting, Lead, RepRow, dict] | None:
        manage_id = tokens.read_manage_token(manage_token)
        if manage_id is None:
            return None
        with self.engine.connect() as conn:
            meeting = booking_store.meeting_by_manage_id(conn, manage_id)
            if meeting is None:
                return None
            lead = booking_store.lead(conn, meeting.lead_id)
            reps = booking_store.reps(conn)
        rep = next((row for row in reps.values() if row.id == meeting.rep_id), None)
        if lead is None or rep is None:
            return None
        return meeting, lead, rep, reps

    def _busy_but(self, meeting: Meeting, rep: RepRow, now: datetime):
        """The rep's busy times without the meeting being moved (and the unread calendars)."""
        busy, unread = self.busy([rep], now)
        return [b for b in busy[rep.rep.id] if b != (meeting.starts_at, meeting.ends_at)], unread

    def reschedule_offer(self, meeting: Meeting, rep: RepRow, now: datetime) -> offers.Offer:
        """The rep's slots to move ``meeting`` to (the rep's own only: no pool)."""
        busy, unread = self._busy_but(meeting, rep, now)
        offer = offers.offer(rep.rep, [], {rep.rep.id: busy}, now, self.rules)
        offer.unread = unread
        return offer

    def _reschedule_slot(
        self, meeting: Meeting, rep: RepRow, slot_key: str, now: datetime
    ) -> offers.Slot | None:
        busy, _ = self._busy_but(meeting, rep, now)
        free = offers.free_slots(rep.rep, now, self.rules, busy)
        return next((slot for slot in free if slot.key == slot_key), None)

    def cancel(self, manage_token: str, form: str | None, now: datetime | None = None) -> Outcome:
        now = _utc(now)
        found = self.managed(manage_token)
        if found is None or not tokens.form_ok(manage_token, form):
            return Outcome("forbidden")
        meeting, lead, rep, _ = found
        with self.engine.begin() as conn:
            done = writes.cancel(
                conn, meeting.manage_id, rep, lead, now, to_calendar=self.calendars.has(rep.rep.id)
            )
        return Outcome("cancelled", meeting=done or meeting, replayed=done is None)

    def reschedule(
        self, manage_token: str, slot_key: str, form: str | None, now: datetime | None = None
    ) -> Outcome:
        now = _utc(now)
        found = self.managed(manage_token)
        if found is None or not tokens.form_ok(manage_token, form):
            return Outcome("forbidden")
        meeting, lead, rep, _ = found
        if meeting.status != "booked" or lead.status not in BOOKABLE:
            return Outcome("closed", meeting=meeting)
        if lead.owner_id != meeting.rep_id:  # reassigned since: book the new owner instead
            return Outcome("closed", meeting=meeting)
        slot = self._reschedule_slot(meeting, rep, slot_key, now)
        if slot is None:
            return Outcome("taken", meeting=meeting)
        try:
            with self.engine.begin() as conn:
                moved = writes.reschedule(
                    conn,
                    meeting.manage_id,
                    slot,
                    rep,
                    lead,
                    now,
                    to_calendar=self.calendars.has(rep.rep.id),
                )
        except (writes.Taken, IntegrityError):
            return Outcome("taken", meeting=meeting)
        except writes.NotBookable:
            return Outcome("closed", meeting=meeting)
        return Outcome("booked", meeting=moved)
