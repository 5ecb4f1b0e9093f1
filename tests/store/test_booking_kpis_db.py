"""Booking KPIs read from real tables (SQLite and PostgreSQL): leads routed by two rules and
the fallback, sent booking links, booked through the booking service (one cancelled through
it, which voids its ``meeting_booked`` and logs ``meeting_cancelled``), and reps' attendance
activities; the report's figures and its "Booking" section (the pure functions are in
unit/report/test_booking_kpis.py)."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import select

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.booking import tokens
from leadflow.booking.rules import BookingRules
from leadflow.booking.service import Booking
from leadflow.booking.store import create_links
from leadflow.calendars import Calendars
from leadflow.kpi import measures as kpi
from leadflow.routing.rules import load_rules
from leadflow.routing.store import sync_reps

from helpers import NOW, mqls, rules_file

pytestmark = pytest.mark.store


@pytest.fixture(autouse=True)
def _signing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_PUBLIC_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("LEADFLOW_UNSUBSCRIBE_SECRET", "booking-kpi-test-secret")


def route(conn, ids: list[int], owners: list[int], rules: list[str | None], steps: list[str]):
    """The leads to ``routed`` with their owners and open assignments, as routing writes them."""
    lifecycle.apply(
        conn,
        pd.DataFrame(
            {"id": ids, "from_status": "mql", "to_status": "routed", "owner_rep_id": owners}
        ),
        actor="test",
        at=NOW,
    )
    conn.execute(
        t.assignments.insert(),
        [
            {
                "lead_id": lead,
                "rep_id": owner,
                "rep_code": "x",
                "step": step,
                "rule": rule,
                "version": "test",
                "reason": "test",
                "assigned_at": NOW,
            }
            for lead, owner, rule, step in zip(ids, owners, rules, steps, strict=True)
        ],
    )


def book(service: Booking, token: str, after: timedelta):
    """Book the first slot the lead's page offers, ``after`` its capture."""
    moment = NOW + after
    view = service.view(token, now=moment)
    assert view is not None and view.offer is not None and view.offer.slots
    outcome = service.book(token, view.offer.slots[0].key, tokens.form_token(token), now=moment)
    assert outcome.kind == "booked", outcome
    return outcome.meeting


def activity(conn, lead: int, rep: int | None, kind: str, key: str) -> None:
    conn.execute(
        t.activities.insert().values(
            lead_id=lead,
            rep_id=rep,
            activity_type=kind,
            occurred_at=NOW + timedelta(days=2),
            source="crm",
            activity_key=key,
            recorded_at=NOW + timedelta(days=2),
        )
    )


def setup(database_url: str, tmp_path) -> tuple[dict[str, int], list[int], dict[int, str]]:
    """Six leads: five routed and sent links (na: 3 web leads, europe: 1 event lead,
    fallback: 1 event lead), one routed without a link."""
    engine = store.get_engine(database_url)
    routing, _, _ = load_rules(rules_file(tmp_path))
    ids = mqls(engine, ["US", "US", "US", "DE", "FR", "US"])
    with engine.begin() as conn:
        reps = sync_reps(conn, routing, NOW)
        for lead, source in zip(ids, ["web", "web", "web", "event", "event", "web"], strict=True):
            conn.execute(t.leads.update().where(t.leads.c.id == lead).values(source=source))
        owners = [reps["ann"], reps["bob"], reps["ann"], reps["cem"], reps["olga"], reps["ann"]]
        route(
            conn,
            ids,
            owners,
            ["north-america"] * 3 + ["europe", None, "north-america"],
            ["rule"] * 4 + ["fallback", "rule"],
        )
        links = create_links(conn, ids[:5], NOW, timedelta(days=14))
    return reps, ids, links


def test_booking_kpis_from_the_tables(database_url, tmp_path):
    reps, ids, links = setup(database_url, tmp_path)
    service = Booking(database_url, Calendars(None), BookingRules())
    first = book(service, links[ids[0]], timedelta(hours=1))
    book(service, links[ids[1]], timedelta(hours=3))
    cancelled = book(service, links[ids[3]], timedelta(hours=2))
    manage = tokens.manage_token(cancelled.manage_id)
    done = service.cancel(manage, tokens.form_token(manage), now=NOW + timedelta(hours=4))
    assert done.kind == "cancelled"
    engine = store.get_engine(database_url)
    with engine.begin() as conn:
        activity(conn, ids[0], reps["ann"], "meeting_held", "held-1")
        activity(conn, ids[1], reps["bob"], "no_show", "noshow-2")
        activity(conn, ids[2], reps["ann"], "no_show", "noshow-3")
        activity(conn, ids[5], reps["ann"], "meeting_held", "held-6")
        activity(conn, ids[5], reps["ann"], "meeting_held", "held-6b")
        # A voided no-show does not count.
        activity(conn, ids[4], reps["olga"], "no_show", "voided")
        conn.execute(
            t.activities.update()
            .where(t.activities.c.activity_key == "voided")
            .values(voided_at=NOW + timedelta(days=3))
        )
        voided = conn.execute(
            select(t.activities.c.voided_at).where(
                t.activities.c.lead_id == cancelled.lead_id,
                t.activities.c.activity_type == "meeting_booked",
            )
        ).scalar_one()
    assert voided is not None  # the cancel voided its meeting_booked
    with engine.connect() as conn:
        figures = kpi.figures(kpi.read_views(conn), NOW + timedelta(days=5))
    report = figures["booking"]
    json.dumps(figures, allow_nan=False)

    assert report["meetings"] == {"booked": 3, "live": 2, "cancelled": 1}
    assert first.lead_id == ids[0]
    speed = report["speed_to_meeting"]
    assert speed["all"] == {"leads": 3, "median_s": 7200.0, "p90_s": 10080.0}
    assert speed["live"] == {"leads": 2, "median_s": 7200.0, "p90_s": 10080.0}
    assert speed["cancelled"] == {"leads": 1, "median_s": 7200.0, "p90_s": 7200.0}
    rate = report["booking_rate"]
    assert rate["overall"] == {"linked": 5, "booked": 2, "cancelled_only": 1, "rate": 0.4}
    assert rate["by_source"] == [
        {"source": "web", "linked": 3, "booked": 2, "cancelled_only": 0, "rate": 0.6667},
        {"source": "event", "linked": 2, "booked": 0, "cancelled_only": 1, "rate": 0.0},
    ]
    by_rule = {(r["rule"], r["step"]): (r["linked"], r["booked"]) for r in rate["by_rule"]}
    assert by_rule == {
        ("north-america", "rule"): (3, 2),
        ("europe", "rule"): (1, 0),
        (None, "fallback"): (1, 0),
    }
    shows = {r["rep"]: r for r in report["no_shows"]["by_rep"]}
    assert (shows["ann"]["held"], shows["ann"]["no_show"]) == (3, 1)
    assert shows["ann"]["no_show_rate"] == 0.25 and shows["bob"]["no_show_rate"] == 1.0
    assert "olga" not in shows  # its only activity was voided
    assert shows["cem"]["cancelled"] == 1  # the booking page's meeting_cancelled
    assert report["no_shows"]["overall"]["no_show_rate"] == 0.4
    assert report["cancellations"] == {
        "meetings": 1,
        "leads": 1,
        "of_booked": round(1 / 3, 4),
        "activities": 1,
    }
    section = kpi.markdown(figures)
    assert "## Booking" in section
    assert "5 leads were sent a booking link; 2 have a live meeting (40.0%)" in section
    assert "| north-america | 3 | 2 | 66.7% |" in section
    assert "| (fallback) | 1 | 0 | 0.0% |" in section
    assert "None" not in section
