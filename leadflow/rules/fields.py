"""The vocabulary every rules file and mapping shares: the fields a record can fill on a lead,
the engagement event types, the sales activity types. Capture's mappings, the conditions of
scoring, routing, cadences and recycling, and the SLA policies all name these."""

from __future__ import annotations

# Fields a record can fill on a lead.
LEAD_FIELDS = (
    "email",
    "first_name",
    "last_name",
    "company",
    "title",
    "phone",
    "country",
    "website",
    "source",
    "created_at",
)

# The engagement event types leadflow knows (suites/events.yaml accepts exactly these).
EVENT_TYPES = (
    "page_view",
    "email_open",
    "email_click",
    "form_fill",
    "webinar",
    "reply",
    "meeting_booked",
    "unsubscribe",
    "bounce",
)

# What sales does with a lead. Dispositions move its status; the rest are touches.
ACTIVITY_TYPES = (
    "call",
    "email",
    "meeting_booked",
    "meeting_held",
    "no_show",  # a booked meeting the lead did not come to
    "meeting_cancelled",  # a booking cancelled (the booking page; its meeting_booked is voided)
    "accept",
    "reject",
    "qualify",
    "won",
    "lost",
    "not_now",
    "no_response",
)
