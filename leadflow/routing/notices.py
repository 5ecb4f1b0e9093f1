"""Owner notifications built from routing decisions (pure).

``owner_messages`` turns a batch's assignments into outbox rows: text from a Jinja2 template
with the reason the lead is the rep's; for hot leads, the owner's next free slots in their
working hours and an ICS invitation built with ``icalendar``. The routing hop enqueues them in
the assignment's transaction; delivery is the outbox's (``leadflow/outbox/sender.py``, run by
the ``send_outbox`` task in ``tasks/outbox.py``).
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
    free time (``busy``: rep id -> intervals already taken), and an ICS invitation.

    The steps, each defined below in this order: ``hot_lead_slots`` (each owner's free slots,
    found once for all their hot leads), ``lead_texts`` (the leads' fields as text), then per
    lead ``take_slots`` (this lead's share of its owner's slots) and ``owner_message`` (the
    outbox row: ``message_values``, the rendered subject and body, ``invitation``).

    Worked example (``rules/routing.yaml``, Tuesday 24 Nov 2026 13:00 UTC): lead 1, Ada
    Lovelace of Analytical Engines, hot, and lead 2, Bo Chen, cold, both routed to felix-weber
    (Berlin, 09:00-17:00) → two rows, "owner:1:felix-weber" with slots Tue 24 Nov 15:00-15:30,
    15:30-16:00 and 16:00-16:30 Berlin time (not before an hour from now) and an invitation
    for the first; "owner:2:felix-weber" with neither.
    """
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    routed = assignments[assignments["owner"].notna()]
    if routed.empty:
        return pd.DataFrame(columns=list(outbox.MESSAGE_COLUMNS))
    details = leads.set_index("id").reindex(routed["id"].to_numpy())
    reps = {rep.id: rep for rep in rules.reps}
    free = hot_lead_slots(routed, details, reps, now, busy or {})
    texts = lead_texts(details)
    owners = routed["owner"].tolist()
    reasons = routed["reason"].tolist()
    versions = routed["version"].tolist()
    used: dict[str, int] = {}
    rows = []
    for i, lead_id in enumerate(routed["id"].tolist()):
        rep = reps[owners[i]]
        lead = {name: values[i] for name, values in texts.items()}  # fixed key order
        slots = take_slots(free, used, rep.id, lead["temperature"])
        rows.append(owner_message(rep, lead, lead_id, reasons[i], versions[i], slots, now))
    return pd.DataFrame(rows, columns=list(outbox.MESSAGE_COLUMNS)[:9])


def hot_lead_slots(
    routed: pd.DataFrame,
    details: pd.DataFrame,
    reps: dict[str, Rep],
    now: datetime,
    busy: dict[str, Sequence[tuple[datetime, datetime]]],
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Per owner with hot leads, ``SLOTS_PER_HOT_LEAD`` free meeting slots per hot lead,
    found in one search (``details``: the leads' fields, row for row with ``routed``).

    Example: felix-weber owns two hot leads and a warm one → {"felix-weber": his next 6 free
    30-minute slots}; an owner of only warm leads gets no entry.
    """
    hot_counts = (
        routed.assign(
            hot=(details.get("temperature", pd.Series(index=details.index)) == "hot").to_numpy()
        )
        .groupby("owner")["hot"]
        .sum()
    )
    free: dict[str, list[tuple[datetime, datetime]]] = {}
    for rep_id, hot in hot_counts.items():
        if hot:
            free[rep_id] = next_free_slots(
                reps[rep_id],
                now,
                int(hot) * SLOTS_PER_HOT_LEAD,
                MEETING,
                busy.get(rep_id, ()),
                not_before=NOT_BEFORE,
            )
    return free


# The lead's fields a message reads, in the order that fixes a message's shape.
LEAD_FIELDS = (
    "first_name",
    "last_name",
    "title",
    "company",
    "email",
    "phone",
    "score",
    "temperature",
)


def lead_texts(details: pd.DataFrame) -> dict[str, list[str | None]]:
    """``LEAD_FIELDS`` as lists of stripped text, blanks and missing fields as None.

    Example: first_name [" Ada ", None], no phone column → {"first_name": ["Ada", None],
    ..., "phone": [None, None], ...}; a score 91.5 becomes "91.5".
    """
    return {
        name: (_texts(details[name]) if name in details.columns else [None] * len(details))
        for name in LEAD_FIELDS
    }


def take_slots(
    free: dict[str, list[tuple[datetime, datetime]]],
    used: dict[str, int],
    rep_id: str,
    temperature: str | None,
) -> list[tuple[datetime, datetime]]:
    """A hot lead's own ``SLOTS_PER_HOT_LEAD`` slots from its owner's ``free`` ones (``used``:
    how many each owner's earlier leads took); other leads get none.

    Example: felix-weber's free slots [s1 .. s6]: his first hot lead gets [s1, s2, s3], a warm
    lead [], the next hot lead [s4, s5, s6].
    """
    if temperature != "hot" or rep_id not in free:
        return []
    start = used.get(rep_id, 0)
    used[rep_id] = start + SLOTS_PER_HOT_LEAD
    return free[rep_id][start : start + SLOTS_PER_HOT_LEAD]


def owner_message(
    rep: Rep,
    lead: dict[str, str | None],
    lead_id: Any,
    reason: str,
    version: str,
    slots: list[tuple[datetime, datetime]],
    now: datetime,
) -> dict[str, Any]:
    """One outbox row: the owner notification for ``lead`` (``lead_texts``' fields).

    Example: lead 2, Bo Chen of Bo Ltd, cold, for felix-weber → key "owner:2:felix-weber",
    recipient felix.weber@leadflow-demo.example, subject "New cold lead for you: Bo Chen (Bo
    Ltd)", a body naming ``reason``, payload {"lead_id": 2, "owner": "felix-weber", "reason":
    ..., "slots": []}, no attachments.
    """
    key = f"owner:{lead_id}:{rep.id}"
    values = message_values(rep, lead, lead_id, reason, version, slots)
    shape = (*(value is not None for value in lead.values()), len(slots))
    attachments = invitation(rep, values, slots, key, now)
    return {
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
            "reason": reason,
            "slots": [[s.isoformat(), e.isoformat()] for s, e in slots],
        },
        "attachments": attachments,
    }


def message_values(
    rep: Rep,
    lead: dict[str, str | None],
    lead_id: Any,
    reason: str,
    version: str,
    slots: list[tuple[datetime, datetime]],
) -> dict[str, Any]:
    """What the templates read: the lead's fields, the rep's first name, a name for the lead,
    the slots as text in the rep's time zone.

    Example: first_name None, last_name "Chen", lead 7 → lead_name "Chen" (both None:
    "lead #7"); rep Felix Weber → rep_name "Felix"; slot 14:00-14:30 UTC for Berlin → "Tue
    24 Nov 15:00-15:30".
    """
    first, last = lead["first_name"], lead["last_name"]
    return {
        **lead,
        "rep_name": rep.name.split(" ")[0],
        "lead_name": " ".join(p for p in (first, last) if p) or f"lead #{lead_id}",
        "reason": reason,
        "lead_id": lead_id,
        "version": version,
        "time_zone": rep.timezone,
        "slots": [
            s.astimezone(rep.zone).strftime("%a %d %b %H:%M") + f"-{e.astimezone(rep.zone):%H:%M}"
            for s, e in slots
        ],
    }


def invitation(
    rep: Rep,
    values: dict[str, Any],
    slots: list[tuple[datetime, datetime]],
    key: str,
    now: datetime,
) -> list[dict[str, str]] | None:
    """The attachments: an ICS invitation for the first slot, None when there are no slots.
    Its UID derives from the idempotency ``key``, so a resent message updates one event.

    Example: key "owner:1:felix-weber", slots [(14:00, 14:30 UTC), ...] → [{"filename":
    "first-meeting.ics", "content_type": "text/calendar; method=REQUEST", "content": a
    VCALENDAR whose event starts 14:00 UTC, UID "<24 hex digits>@leadflow"}].
    """
    if not slots:
        return None
    uid = hashlib.sha256(key.encode()).hexdigest()[:24] + "@leadflow"
    return [
        {
            "filename": "first-meeting.ics",
            "content_type": "text/calendar; method=REQUEST",
            "content": meeting_invitation(rep, values, slots[0], uid, now),
        }
    ]
