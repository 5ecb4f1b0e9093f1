"""Booking links for routed leads, in routing's transaction: each owner notice carries the
lead's link, and the lead's first email (``booking_invite``) offers it to the lead.

``with_links`` is the routing context's ``links`` (tasks/routing.py ``load_context`` sets it):
the routing hop (``persist_routing``) and ``routing.reassign`` call it through the context (a
new owner's notice carries the same link: the page always offers the current owner's slots).
Routing itself imports no booking.
"""

from __future__ import annotations

import logging
from datetime import datetime

import pandas as pd
from sqlalchemy import Connection

from leadflow.booking import messages, tokens
from leadflow.booking import rules as booking_rules
from leadflow.booking import store as booking_store
from leadflow.config import ConfigError
from leadflow.nurture import plan as nurture_plan
from leadflow.nurture import store as nurture_store
from leadflow.routing.rules import RoutingRules

log = logging.getLogger(__name__)


def with_links(
    conn: Connection,
    notices: pd.DataFrame,
    rules: RoutingRules,
    now: datetime,
    leads: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """``notices`` (owner notifications, outbox rows) with each lead's booking link in the
    body and payload, plus, for ``leads`` (``id``, ``email``, ``first_name``) when the booking
    rules say so, the lead's ``booking_invite`` email. Unchanged when booking is off, or the
    links cannot be signed (no Public Site block: logged once per call, routing goes on)."""
    if notices.empty:
        return notices
    try:
        booking = booking_rules.current()
        if not booking.enabled:
            return notices
        tokens.book_url("x")  # the public URL and the secret are readable
        found = booking_store.create_links(
            conn, notices["lead_id"].tolist(), now, booking.link_life
        )
    except ConfigError as exc:
        log.error("booking links not made (routing goes on without them): %s", exc)
        return notices
    urls = {lead_id: tokens.book_url(token) for lead_id, token in found.items()}
    out = notices.copy()
    out["body"] = [
        f"{body}\nThe lead can book a first call with you here: {urls[int(i)]}\n"
        for body, i in zip(out["body"], out["lead_id"], strict=True)
    ]
    out["payload"] = [
        {**(payload or {}), "booking_url": urls[int(i)]}
        for payload, i in zip(out["payload"], out["lead_id"], strict=True)
    ]
    if leads is None or not booking.email_lead:
        return out
    return pd.concat([out, _invites(conn, out, leads, rules, urls)], ignore_index=True)


def _invites(
    conn: Connection,
    notices: pd.DataFrame,
    leads: pd.DataFrame,
    rules: RoutingRules,
    urls: dict[int, str],
) -> pd.DataFrame:
    reps = {rep.id: rep for rep in rules.reps}
    details = leads.drop_duplicates("id").set_index("id")
    try:  # nurture's suppression: no lead it would never contact is invited either
        stopped = nurture_store.suppressed(
            conn, [int(i) for i in notices["lead_id"]], nurture_plan.suppression_context()
        )
    except ConfigError as exc:
        log.error("no booking invitations (the suppression could not be read): %s", exc)
        return pd.DataFrame(columns=list(notices.columns))
    rows = []
    for lead_id, payload in zip(notices["lead_id"], notices["payload"], strict=True):
        lead_id = int(lead_id)
        email = details["email"].get(lead_id) if "email" in details else None
        rep = reps.get((payload or {}).get("owner"))
        if not isinstance(email, str) or not email.strip() or rep is None or lead_id in stopped:
            continue
        first = details["first_name"].get(lead_id) if "first_name" in details else None
        first = first.strip() if isinstance(first, str) and first.strip() else None
        rows.append(messages.invite_message(lead_id, email.strip(), first, rep, urls[lead_id]))
    return pd.DataFrame(rows, columns=list(notices.columns))
