"""Booking KPIs: how fast and how often routed leads book their first meeting, whether they
come, and how many bookings are cancelled. Read from the tables (``read_frames``: one query
a table), computed by pure functions (``figures``); ``leadflow.kpi.measures`` adds them to the
report as ``booking`` and draws its "Booking" section.

What is counted, and why:

- speed to meeting: per lead, capture (``leads.captured_at``) -> its first booking
  (``meetings.booked_at``), cancelled bookings included (the lead acted then), as ``all``, and
  split into leads that still have a live meeting (``live``) and leads whose every booking
  was cancelled (``cancelled``); median and p90 in seconds, as ``speed_to_lead``;
- booking rate: of the leads that were sent a booking link, those with a live meeting now,
  overall, per ``leads.source`` and per the routing rule of the assignment that was open
  when the lead's first link was made (links are made in routing's transaction, so that is
  the routing decision that sent the link; ``step`` names it when no rule did, e.g.
  ``fallback``, and both are None for a link made while the lead had no open assignment);
- no-shows: ``meeting_held`` against ``no_show`` activities (voided ones left out), per rep
  and overall, and the no-show rate = no-shows / (held + no-shows);
- cancellations: meetings booked on the page and cancelled since, and every
  ``meeting_cancelled`` activity (the page's and those logged by reps or a CRM).

Every figure is a plain int, a rounded float or None where it is undefined (no lead, no
meeting held): the report is strict JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, select, union

from leadflow import store
from leadflow import tables as t

FRAMES = (
    "booking_leads",
    "booking_links",
    "booking_assignments",
    "booking_meetings",
    "booking_activities",
)
ATTENDANCE = ("meeting_held", "no_show", "meeting_cancelled")


# --------------------------------------------------------------------------- reading


def read_frames(conn: Connection) -> dict[str, pd.DataFrame]:
    """What the booking KPIs are computed from, one frame per table: the leads that were sent
    a link or booked (source, capture time), their links, the assignments of linked leads,
    every meeting, and the attendance and cancellation activities not voided."""
    links, meetings, a, acts = t.booking_links, t.meetings, t.assignments, t.activities
    involved = union(select(links.c.lead_id), select(meetings.c.lead_id)).subquery()
    linked = select(links.c.lead_id).distinct()
    queries = {
        "booking_leads": select(
            t.leads.c.id.label("lead_id"), t.leads.c.source, t.leads.c.captured_at
        ).where(t.leads.c.id.in_(select(involved.c.lead_id))),
        "booking_links": select(links.c.lead_id, links.c.created_at),
        "booking_assignments": select(
            a.c.lead_id, a.c.rule, a.c.step, a.c.assigned_at, a.c.released_at
        ).where(a.c.lead_id.in_(linked)),
        "booking_meetings": select(
            meetings.c.lead_id,
            meetings.c.rep_code,
            meetings.c.status,
            meetings.c.booked_at,
            meetings.c.cancelled_at,
        ),
        "booking_activities": select(
            acts.c.lead_id, t.reps.c.code.label("rep"), acts.c.activity_type
        )
        .select_from(acts.outerjoin(t.reps, t.reps.c.id == acts.c.rep_id))
        .where(acts.c.activity_type.in_(ATTENDANCE), acts.c.voided_at.is_(None)),
    }
    return {name: store.read_frame(conn, query) for name, query in queries.items()}


# --------------------------------------------------------------------------- pure figures


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _plain(value: Any) -> Any:
    """A group key as JSON has it: None for a missing value (pandas' NaN / None)."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value


def quantiles(seconds: pd.Series) -> dict[str, Any]:
    """Median and p90 of ``seconds`` (missing values left out), as ``speed_to_lead`` has them."""
    values = pd.to_numeric(seconds, errors="coerce").dropna()
    if values.empty:
        return {"leads": 0, "median_s": None, "p90_s": None}
    return {
        "leads": len(values),
        "median_s": round(float(values.median()), 1),
        "p90_s": round(float(np.percentile(values, 90)), 1),
    }


def lead_bookings(meetings: pd.DataFrame) -> pd.DataFrame:
    """Per lead that booked: ``first_booked_at`` (its first booking, live or cancelled since)
    and ``live`` (it has a live meeting now)."""
    if meetings.empty:
        return pd.DataFrame(
            {"lead_id": pd.Series(dtype="int64"), "first_booked_at": [], "live": []}
        )
    frame = meetings.assign(
        booked_at=pd.to_datetime(meetings["booked_at"], utc=True),
        live=meetings["status"] == "booked",
    )
    grouped = frame.groupby("lead_id")
    return pd.DataFrame(
        {"first_booked_at": grouped["booked_at"].min(), "live": grouped["live"].any()}
    ).reset_index()


def speed_to_meeting(leads: pd.DataFrame, meetings: pd.DataFrame) -> dict[str, Any]:
    """Capture -> first booking per lead: ``all`` the leads that booked, and apart, ``live``
    (a meeting still booked) and ``cancelled`` (every booking cancelled)."""
    booked = lead_bookings(meetings).merge(
        leads[["lead_id", "captured_at"]], on="lead_id", how="inner"
    )
    seconds = (
        pd.to_datetime(booked["first_booked_at"], utc=True)
        - pd.to_datetime(booked["captured_at"], utc=True)
    ).dt.total_seconds()
    live = booked["live"].astype(bool)
    return {
        "all": quantiles(seconds),
        "live": quantiles(seconds[live]),
        "cancelled": quantiles(seconds[~live]),
    }


def link_rule(links: pd.DataFrame, assignments: pd.DataFrame) -> pd.DataFrame:
    """Per linked lead: the ``rule`` and ``step`` of the assignment open when its first link
    was made (assigned at or before, not released by then; the newest such), None for both
    when none was open."""
    first = (
        links.assign(created_at=pd.to_datetime(links["created_at"], utc=True))
        .groupby("lead_id", as_index=False)["created_at"]
        .min()
    )
    if assignments.empty or first.empty:
        return first.assign(rule=None, step=None)[["lead_id", "rule", "step"]]
    pairs = first.merge(assignments, on="lead_id", how="inner")
    assigned = pd.to_datetime(pairs["assigned_at"], utc=True)
    released = pd.to_datetime(pairs["released_at"], utc=True)
    open_then = (assigned <= pairs["created_at"]) & (
        released.isna() | (released > pairs["created_at"])
    )
    chosen = (
        pairs[open_then]
        .assign(assigned_at=assigned[open_then])
        .sort_values(["lead_id", "assigned_at"])
        .drop_duplicates("lead_id", keep="last")[["lead_id", "rule", "step"]]
    )
    return first[["lead_id"]].merge(chosen, on="lead_id", how="left")


def _rates(frame: pd.DataFrame, keys: list[str]) -> list[dict[str, Any]]:
    """Linked leads, leads with a live meeting, leads whose bookings were all cancelled, and
    the booking rate, per group of ``keys`` (missing keys are a group of their own)."""
    rows = []
    for key, group in frame.groupby(keys, dropna=False, sort=False):
        values = key if isinstance(key, tuple) else (key,)
        linked, booked = len(group), int(group["live"].sum())
        rows.append(
            {
                **{name: _plain(v) for name, v in zip(keys, values, strict=True)},
                "linked": linked,
                "booked": booked,
                "cancelled_only": int(group["cancelled_only"].sum()),
                "rate": _rate(booked, linked),
            }
        )
    return sorted(rows, key=lambda r: (-r["linked"], *(str(r[k]) for k in keys)))


def booking_rates(
    leads: pd.DataFrame,
    links: pd.DataFrame,
    assignments: pd.DataFrame,
    meetings: pd.DataFrame,
) -> dict[str, Any]:
    """Leads sent a link -> leads with a live meeting: overall, per source, per rule."""
    linked = link_rule(links, assignments)
    bookings = lead_bookings(meetings)
    frame = linked.merge(bookings[["lead_id", "live"]], on="lead_id", how="left").merge(
        leads[["lead_id", "source"]], on="lead_id", how="left"
    )
    booked_ever = frame["live"].notna()
    frame["live"] = frame["live"].astype("boolean").fillna(False).astype(bool)
    frame["cancelled_only"] = booked_ever & ~frame["live"]
    total, live = len(frame), int(frame["live"].sum())
    return {
        "overall": {
            "linked": total,
            "booked": live,
            "cancelled_only": int(frame["cancelled_only"].sum()),
            "rate": _rate(live, total),
        },
        "by_source": _rates(frame, ["source"]),
        "by_rule": _rates(frame, ["rule", "step"]),
    }


def _attendance(rep: Any, group: pd.DataFrame) -> dict[str, Any]:
    kinds = group["activity_type"].value_counts()
    held, missed = int(kinds.get("meeting_held", 0)), int(kinds.get("no_show", 0))
    return {
        "rep": _plain(rep),
        "held": held,
        "no_show": missed,
        "cancelled": int(kinds.get("meeting_cancelled", 0)),
        "no_show_rate": _rate(missed, held + missed),
    }


def no_shows(activities: pd.DataFrame) -> dict[str, Any]:
    """Meetings held and no-shows (and cancellations) from the activities, per rep (None: an
    activity with no rep) and overall, with the no-show rate of the meetings that were due."""
    by_rep = [
        _attendance(rep, group)
        for rep, group in activities.groupby("rep", dropna=False, sort=False)
    ]
    by_rep.sort(key=lambda r: (r["rep"] is None, str(r["rep"])))
    return {"overall": _attendance(None, activities), "by_rep": by_rep}


def cancellations(meetings: pd.DataFrame, activities: pd.DataFrame) -> dict[str, Any]:
    """Meetings booked on the page and cancelled since (and their leads, and their share of
    every meeting booked), and every ``meeting_cancelled`` activity."""
    cancelled = meetings[meetings["status"] == "cancelled"]
    return {
        "meetings": len(cancelled),
        "leads": int(cancelled["lead_id"].nunique()),
        "of_booked": _rate(len(cancelled), len(meetings)),
        "activities": int((activities["activity_type"] == "meeting_cancelled").sum()),
    }


def figures(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Every booking KPI from ``read_frames``'s frames (pure)."""
    leads, meetings = frames["booking_leads"], frames["booking_meetings"]
    activities = frames["booking_activities"]
    return {
        "meetings": {
            "booked": len(meetings),
            "live": int((meetings["status"] == "booked").sum()),
            "cancelled": int((meetings["status"] == "cancelled").sum()),
        },
        "speed_to_meeting": speed_to_meeting(leads, meetings),
        "booking_rate": booking_rates(
            leads, frames["booking_links"], frames["booking_assignments"], meetings
        ),
        "no_shows": no_shows(activities),
        "cancellations": cancellations(meetings, activities),
    }
