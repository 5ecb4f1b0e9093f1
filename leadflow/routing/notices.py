"""Telling people: owner notifications built from routing decisions, and the outbox sender.

Pure first: ``owner_messages`` turns a batch's assignments into outbox rows (text from a
Jinja2 template with the reason the lead is the rep's; for hot leads, the owner's next free
slots in their working hours and an ICS invitation built with ``icalendar``). The routing hop
enqueues them in the assignment's transaction.

Then delivery: ``send_outbox`` is the Prefect task around ``leadflow.outbox.sender.send_due``, which
claims due messages and sends them exactly as ``leadflow/outbox/store.py`` promises.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from icalendar import Calendar, Event, vCalAddress, vText
from jinja2 import Environment, StrictUndefined

from leadflow.business_time import next_free_slots
from leadflow.outbox import store as outbox
from leadflow.routing.rules import Rep, RoutingRules

log = logging.getLogger(__name__)

MEETING = timedelta(minutes=30)
SLOTS_PER_HOT_LEAD = 3
# A first meeting proposed in less than an hour is a slot nobody can take.
NOT_BEFORE = timedelta(hours=1)

# --------------------------------------------------------------------------- messages (pure)

_TEMPLATES = Environment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
SUBJECT = _TEMPLATES.from_string(
    "New {{ temperature or 'new' }} lead for you: {{ lead_name }}"
    "{% if company %} ({{ company }}){% endif %}"
)
BODY = _TEMPLATES.from_string(
    """Hi {{ rep_name }},

{{ lead_name }}{% if title %}, {{ title }}{% endif %}{% if company %} at {{ company }}{% endif %} is now your lead.

Why it is yours: {{ reason }}.
{% if score is not none %}Score {{ score }}{% if temperature %} ({{ temperature }}){% endif %}.
{% endif %}{% if email %}Email: {{ email }}
{% endif %}{% if phone %}Phone: {{ phone }}
{% endif %}{% if slots %}
This lead is hot: people who hear back within five minutes qualify far more often.
Your next free slots for a first meeting ({{ time_zone }}):
{% for slot in slots %}  - {{ slot }}
{% endfor %}The attached invitation holds the first one; move it if another suits the lead.
{% endif %}
Lead #{{ lead_id }} · routing rules {{ version }}
"""
)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    text = str(value).strip()
    return text or None


def _texts(values: pd.Series) -> list[str | None]:
    """A column as stripped text, blanks and missing values as None (vectorised ``_text``)."""
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    # Not ``where(text != "", None)``: on pandas 3 string columns that gives NaN, not None.
    return [value or None for value in text.tolist()]


def meeting_invitation(
    rep: Rep, lead: dict[str, Any], slot: tuple[datetime, datetime], uid: str, now: datetime
) -> str:
    """An ICS ``REQUEST`` for a first meeting in ``slot`` (UTC), organised by the rep."""
    calendar = Calendar()
    calendar.add("prodid", "-//leadflow//routing//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "REQUEST")
    event = Event()
    event.add("uid", uid)
    event.add("dtstamp", now)
    event.add("dtstart", slot[0])
    event.add("dtend", slot[1])
    name = _text(lead.get("lead_name")) or "a new lead"
    company = _text(lead.get("company"))
    event.add("summary", f"First call: {name}" + (f" ({company})" if company else ""))
    event.add("status", "TENTATIVE")
    organizer = vCalAddress(f"mailto:{rep.email}")
    organizer.params["cn"] = vText(rep.name)
    event.add("organizer", organizer)
    if email := _text(lead.get("email")):
        attendee = vCalAddress(f"mailto:{email}")
        attendee.params["cn"] = vText(name)
        attendee.params["role"] = vText("REQ-PARTICIPANT")
        event.add("attendee", attendee)
    calendar.add_component(event)
    return calendar.to_ical().decode("utf-8")


_SHAPES: dict[tuple[int, tuple[Any, ...]], str] = {}


def _render(template: Any, values: dict[str, Any], shape: tuple[Any, ...]) -> str:
    """``template.render(values)``, fast for a batch: Jinja renders each *shape* of message
    once (``shape``: which optional parts are present, how many slots) with placeholders, and
    each message fills its shape with ``str.format_map`` (a Jinja render costs ~20 µs)."""
    key = (id(template), shape)
    form = _SHAPES.get(key)
    if form is None:
        holders = {
            name: (
                [f"{{{name}[{k}]}}" for k in range(len(v))]
                if isinstance(v, list)
                else None
                if v is None
                else f"{{{name}}}"
            )
            for name, v in values.items()
        }
        form = template.render(holders)
        _SHAPES[key] = form
    return form.format_map(values)


def owner_messages(
    assignments: pd.DataFrame,
    leads: pd.DataFrame,
    rules: RoutingRules,
    now: datetime,
    *,
    busy: dict[str, Sequence[tuple[datetime, datetime]]] | None = None,
) -> pd.DataFrame:
    """One ``owner_notification`` per assigned lead (waiting leads get none), as outbox rows
    (``leadflow.outbox.store.MESSAGE_COLUMNS``). Idempotency key ``owner:<lead id>:<rep id>``: a
    rerun never notifies twice, a reassignment to someone else notifies them.

    ``assignments``: ``route_leads``'s (id, owner, reason, version). ``leads``: ``id`` and
    whichever of first_name, last_name, company, title, email, phone, score, temperature it
    has. Hot leads get ``SLOTS_PER_HOT_LEAD`` distinct slots per lead from the owner's next
    free time (``busy``: rep id -> intervals already taken), and an ICS invitation."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    routed = assignments[assignments["owner"].notna()]
    if routed.empty:
        return pd.DataFrame(columns=list(outbox.MESSAGE_COLUMNS))
    details = leads.set_index("id").reindex(routed["id"].to_numpy())
    reps = {rep.id: rep for rep in rules.reps}
    hot_counts = (
        routed.assign(
            hot=(details.get("temperature", pd.Series(index=details.index)) == "hot").to_numpy()
        )
        .groupby("owner")["hot"]
        .sum()
    )
    # Slots are found once per owner for all their hot leads, each lead getting its own.
    free: dict[str, list[tuple[datetime, datetime]]] = {}
    for rep_id, hot in hot_counts.items():
        if hot:
            free[rep_id] = next_free_slots(
                reps[rep_id],
                now,
                int(hot) * SLOTS_PER_HOT_LEAD,
                MEETING,
                (busy or {}).get(rep_id, ()),
                not_before=NOT_BEFORE,
            )
    used: dict[str, int] = {}
    rows = []
    column = {
        name: (_texts(details[name]) if name in details.columns else [None] * len(details))
        for name in (
            "first_name",
            "last_name",
            "title",
            "company",
            "email",
            "phone",
            "score",
            "temperature",
        )
    }
    ids = routed["id"].tolist()
    owners = routed["owner"].tolist()
    reasons = routed["reason"].tolist()
    versions = routed["version"].tolist()
    for i, lead_id in enumerate(ids):
        rep = reps[owners[i]]
        lead = {name: values[i] for name, values in column.items()}  # fixed key order
        first, last = lead["first_name"], lead["last_name"]
        lead_name = " ".join(p for p in (first, last) if p) or f"lead #{lead_id}"
        temperature = lead["temperature"]
        slots: list[tuple[datetime, datetime]] = []
        if temperature == "hot" and rep.id in free:
            start = used.get(rep.id, 0)
            slots = free[rep.id][start : start + SLOTS_PER_HOT_LEAD]
            used[rep.id] = start + SLOTS_PER_HOT_LEAD
        key = f"owner:{lead_id}:{rep.id}"
        values = {
            **lead,
            "rep_name": rep.name.split(" ")[0],
            "lead_name": lead_name,
            "reason": reasons[i],
            "lead_id": lead_id,
            "version": versions[i],
            "time_zone": rep.timezone,
            "slots": [
                s.astimezone(rep.zone).strftime("%a %d %b %H:%M")
                + f"-{e.astimezone(rep.zone):%H:%M}"
                for s, e in slots
            ],
        }
        shape = (*(value is not None for value in lead.values()), len(slots))
        attachments = None
        if slots:
            uid = hashlib.sha256(key.encode()).hexdigest()[:24] + "@leadflow"
            attachments = [
                {
                    "filename": "first-meeting.ics",
                    "content_type": "text/calendar; method=REQUEST",
                    "content": meeting_invitation(rep, values, slots[0], uid, now),
                }
            ]
        rows.append(
            {
                "idempotency_key": key,
                "kind": "owner_notification",
                "channel": "email",
                "recipient": rep.email,
                "lead_id": int(lead_id),
                "subject": _render(SUBJECT, values, shape),
                "body": _render(BODY, values, shape),
                "payload": {
                    "lead_id": int(lead_id),
                    "owner": rep.id,
                    "reason": reasons[i],
                    "slots": [[s.isoformat(), e.isoformat()] for s, e in slots],
                },
                "attachments": attachments,
            }
        )
    return pd.DataFrame(rows, columns=list(outbox.MESSAGE_COLUMNS)[:9])


# --------------------------------------------------------------------------- delivery
