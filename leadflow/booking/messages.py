"""What a booking sends (pure): the ICS invitation or cancellation to the lead and the rep,
the event on the rep's CalDAV calendar, and the lead's first email with its booking link.

Every message is an outbox row (``leadflow.outbox.store.MESSAGE_COLUMNS``) keyed by the
meeting and its ICS ``SEQUENCE``, so a rerun never sends twice and each change sends once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from icalendar import Calendar, Event, vCalAddress, vText

from leadflow.booking.store import Lead, Meeting
from leadflow.routing.rules import Rep


def first_name(rep: Rep) -> str:
    return rep.name.split(" ")[0] or rep.id


def ics(
    meeting: Meeting,
    rep: Rep,
    lead: Lead,
    now: datetime,
    *,
    method: str | None,
    cancelled: bool = False,
    manage_url: str | None = None,
) -> str:
    """The meeting as iCalendar: ``method`` REQUEST / CANCEL for an email (iTIP), None for the
    object stored on the rep's CalDAV calendar (which must not carry one)."""
    calendar = Calendar()
    calendar.add("prodid", "-//leadflow//booking//EN")
    calendar.add("version", "2.0")
    if method:
        calendar.add("method", method)
    event = Event()
    event.add("uid", meeting.uid)
    event.add("sequence", meeting.sequence)
    event.add("dtstamp", now)
    event.add("dtstart", meeting.starts_at)
    event.add("dtend", meeting.ends_at)
    company = f" ({lead.company})" if lead.company else ""
    event.add("summary", f"First call: {lead.name}{company} with {rep.name}")
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    if cancelled:
        event.add("transp", "TRANSPARENT")  # a cancelled meeting takes no time
    if manage_url:
        event.add("description", f"Reschedule or cancel: {manage_url}")
    organizer = vCalAddress(f"mailto:{rep.email}")
    organizer.params["cn"] = vText(rep.name)
    event.add("organizer", organizer)
    if lead.email:
        attendee = vCalAddress(f"mailto:{lead.email}")
        attendee.params["cn"] = vText(lead.name)
        attendee.params["role"] = vText("REQ-PARTICIPANT")
        event.add("attendee", attendee)
    calendar.add_component(event)
    return calendar.to_ical().decode("utf-8")


def _when(moment: datetime, zone: Any) -> str:
    local = moment.astimezone(zone)
    return local.strftime("%A %d %B %Y, %H:%M") + f" ({local.tzname()})"


def meeting_messages(
    meeting: Meeting,
    rep: Rep,
    lead: Lead,
    lead_zone: Any,
    now: datetime,
    *,
    manage_url: str,
    cancelled: bool = False,
    to_calendar: bool = False,
) -> list[dict[str, Any]]:
    """The invitation (or cancellation) to the lead and to the rep, and the CalDAV write."""
    method = "CANCEL" if cancelled else "REQUEST"
    change = "cancel" if cancelled else f"v{meeting.sequence}"
    base = f"meeting:{meeting.id}:{change}"

    def attachment(link: str | None) -> list[dict[str, str]]:
        content = ics(meeting, rep, lead, now, method=method, cancelled=cancelled, manage_url=link)
        kind = f"text/calendar; method={method}"
        return [{"filename": "meeting.ics", "content_type": kind, "content": content}]

    verb = "cancelled" if cancelled else "booked"
    rows: list[dict[str, Any]] = []
    if lead.email:
        lead_body = (
            f"Hi {lead.first_name or 'there'},\n\nYour call with {first_name(rep)} is {verb}: "
            f"{_when(meeting.starts_at, lead_zone)}.\n"
            + ("" if cancelled else f"\nTo reschedule or cancel: {manage_url}\n")
        )
        rows.append(
            _email(
                base + ":lead",
                lead.email,
                lead.id,
                f"Your call is {verb}",
                lead_body,
                attachment(manage_url),  # the lead's own reschedule / cancel link
            )
        )
    rep_body = (
        f"Hi {first_name(rep)},\n\n{lead.name}"
        + (f" ({lead.company})" if lead.company else "")
        + f" {verb} a first call with you: {_when(meeting.starts_at, rep.zone)}.\n\n"
        f"Lead #{lead.id}\n"
    )
    rows.append(
        _email(
            base + ":rep",
            rep.email,
            lead.id,
            f"First call {verb}: {lead.name}",
            rep_body,
            attachment(None),  # never the lead's manage link
        )
    )
    if to_calendar:
        rows.append(
            {
                "idempotency_key": base + ":caldav",
                "kind": "calendar_event",
                "channel": "caldav",
                "recipient": rep.id,
                "lead_id": lead.id,
                "subject": None,
                # A cancel is put too (STATUS:CANCELLED, the next SEQUENCE): the calendar
                # keeps the newest change, whatever order the writes are retried in.
                "body": ics(meeting, rep, lead, now, method=None, cancelled=cancelled),
                "payload": {"rep": rep.id, "uid": meeting.uid, "action": "put"},
                "attachments": None,
            }
        )
    return rows


def _email(
    key: str, to: str, lead_id: int, subject: str, body: str, attachments: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "kind": "meeting_invitation",
        "channel": "email",
        "recipient": to,
        "lead_id": int(lead_id),
        "subject": subject,
        "body": body,
        "payload": {"lead_id": int(lead_id)},
        "attachments": attachments,
    }


def invite_message(lead_id: int, email: str, first: str | None, rep: Rep, url: str) -> dict:
    """The lead's first email after routing: who will call, and the booking link."""
    body = (
        f"Hi {first or 'there'},\n\nThanks for getting in touch. {first_name(rep)} will be your "
        f"contact. Pick a time for a first call here:\n\n{url}\n"
    )
    return {
        "idempotency_key": f"booking-invite:{int(lead_id)}",
        "kind": "booking_invite",
        "channel": "email",
        "recipient": email,
        "lead_id": int(lead_id),
        "subject": f"Book a call with {first_name(rep)}",
        "body": body,
        "payload": {"lead_id": int(lead_id), "owner": rep.id},
        "attachments": None,
    }
