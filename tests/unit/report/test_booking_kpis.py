"""Booking KPIs: the pure figures on a few rows, and the report's "Booking" section (the
figures read from real tables are in store/test_booking_kpis_db.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from leadflow.kpi import booking
from leadflow.kpi import measures as kpi

pytestmark = pytest.mark.unit

T0 = pd.Timestamp("2026-11-02T15:00:00Z")


def hours(n: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=n)


def leads() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lead_id": [1, 2, 3, 4, 5, 6],
            "source": ["web", "web", "web", "event", "event", None],
            "captured_at": [T0] * 6,
        }
    )


def meetings() -> pd.DataFrame:
    """Lead 1 booked after 1 h; lead 2 after 2 h, cancelled it, booked again after 5 h; lead
    3 booked after 3 h and cancelled; lead 6 booked (it has no link: booked another way)."""
    return pd.DataFrame(
        {
            "lead_id": [1, 2, 2, 3, 6],
            "rep_code": ["ann", "ann", "bob", "bob", "ann"],
            "status": ["booked", "cancelled", "booked", "cancelled", "booked"],
            "booked_at": [hours(1), hours(2), hours(5), hours(3), hours(10)],
            "cancelled_at": [pd.NaT, hours(4), pd.NaT, hours(6), pd.NaT],
        }
    )


def links() -> pd.DataFrame:
    # Lead 2 got a second link later (renewed): its first one decides the rule.
    return pd.DataFrame({"lead_id": [1, 2, 3, 4, 5, 2], "created_at": [T0] * 5 + [hours(30)]})


def assignments() -> pd.DataFrame:
    """Lead 1 by rule na; lead 2 by rule eu (released before its link), then na (open at the
    link), then moved by booking (no rule) after it; lead 3 by the fallback (no rule); lead 4
    assigned only after its link was made; lead 5 by rule eu."""
    return pd.DataFrame(
        {
            "lead_id": [1, 2, 2, 2, 3, 4, 5],
            "rule": ["na", "eu", "na", None, None, "na", "eu"],
            "step": ["rule", "rule", "rule", "booking", "fallback", "rule", "rule"],
            "assigned_at": [T0, hours(-5), T0, hours(5), T0, hours(1), hours(-1)],
            "released_at": [pd.NaT, hours(-1), hours(5), pd.NaT, pd.NaT, pd.NaT, pd.NaT],
        }
    )


def activities() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lead_id": [1, 2, 3, 4, 5, 6, 7],
            "rep": ["ann", "ann", "ann", "ann", "bob", None, "bob"],
            "activity_type": [
                "meeting_held",
                "meeting_held",
                "meeting_held",
                "no_show",
                "meeting_cancelled",
                "no_show",
                "meeting_cancelled",
            ],
        }
    )


def frames() -> dict[str, pd.DataFrame]:
    return {
        "booking_leads": leads(),
        "booking_links": links(),
        "booking_assignments": assignments(),
        "booking_meetings": meetings(),
        "booking_activities": activities(),
    }


def test_speed_to_meeting_counts_the_first_booking_and_splits_live_from_cancelled():
    speed = booking.speed_to_meeting(leads(), meetings())
    # first bookings: lead 1 1 h, lead 2 2 h (its cancelled one), lead 3 3 h, lead 6 10 h
    assert speed["all"] == {"leads": 4, "median_s": 9000.0, "p90_s": 28440.0}
    # still booked: leads 1, 2 and 6
    assert speed["live"] == {"leads": 3, "median_s": 7200.0, "p90_s": 30240.0}
    assert speed["cancelled"] == {"leads": 1, "median_s": 10800.0, "p90_s": 10800.0}


def test_the_rule_is_the_assignments_open_when_the_first_link_was_made():
    chosen = booking.link_rule(links(), assignments()).set_index("lead_id")
    assert chosen.loc[1, "rule"] == "na" and chosen.loc[2, "rule"] == "na"
    assert chosen.loc[2, "step"] == "rule"  # not the later booking reassignment
    assert pd.isna(chosen.loc[3, "rule"]) and chosen.loc[3, "step"] == "fallback"
    assert pd.isna(chosen.loc[4, "rule"]) and pd.isna(chosen.loc[4, "step"])
    assert chosen.loc[5, "rule"] == "eu"
    assert sorted(chosen.index) == [1, 2, 3, 4, 5]


def test_booking_rate_overall_per_source_and_per_rule():
    rates = booking.booking_rates(leads(), links(), assignments(), meetings())
    # linked 1-5; live meetings: 1 and 2; lead 3 cancelled its only booking; lead 6 unlinked
    assert rates["overall"] == {"linked": 5, "booked": 2, "cancelled_only": 1, "rate": 0.4}
    assert rates["by_source"] == [
        {"source": "web", "linked": 3, "booked": 2, "cancelled_only": 1, "rate": 0.6667},
        {"source": "event", "linked": 2, "booked": 0, "cancelled_only": 0, "rate": 0.0},
    ]
    by_rule = {(r["rule"], r["step"]): r for r in rates["by_rule"]}
    assert set(by_rule) == {("na", "rule"), ("eu", "rule"), (None, "fallback"), (None, None)}
    assert (by_rule[("na", "rule")]["linked"], by_rule[("na", "rule")]["booked"]) == (2, 2)
    assert by_rule[("na", "rule")]["rate"] == 1.0
    assert by_rule[(None, "fallback")]["cancelled_only"] == 1
    assert by_rule[("eu", "rule")]["rate"] == 0.0 and by_rule[(None, None)]["linked"] == 1


def test_no_shows_per_rep_and_overall():
    shows = booking.no_shows(activities())
    assert shows["by_rep"] == [
        {"rep": "ann", "held": 3, "no_show": 1, "cancelled": 0, "no_show_rate": 0.25},
        {"rep": "bob", "held": 0, "no_show": 0, "cancelled": 2, "no_show_rate": None},
        {"rep": None, "held": 0, "no_show": 1, "cancelled": 0, "no_show_rate": 1.0},
    ]
    assert shows["overall"] == {
        "rep": None,
        "held": 3,
        "no_show": 2,
        "cancelled": 2,
        "no_show_rate": 0.4,
    }


def test_cancellations_from_meetings_and_activities():
    assert booking.cancellations(meetings(), activities()) == {
        "meetings": 2,
        "leads": 2,
        "of_booked": 0.4,
        "activities": 2,
    }


def test_figures_are_strict_json_and_the_section_reads_for_a_person():
    figures = booking.figures(frames())
    assert figures["meetings"] == {"booked": 5, "live": 3, "cancelled": 2}
    json.dumps(figures, allow_nan=False)
    section = "\n".join(kpi.booking_markdown(figures))
    assert "5 leads were sent a booking link; 2 have a live meeting (40.0%)" in section
    assert "Capture -> first booking: median 2.5 h, p90 7.9 h over 4 leads" in section
    assert "| web | 3 | 2 | 66.7% |" in section
    assert "| (fallback) | 1 | 0 | 0.0% |" in section
    assert "| - | 1 | 0 | 0.0% |" in section  # lead 4: no assignment open at its link
    assert "| ann | 3 | 1 | 25.0% | 0 |" in section
    assert "| bob | 0 | 0 | n/a | 2 |" in section
    assert "| all | 3 | 2 | 40.0% | 2 |" in section
    assert "Cancellations: 2 booked meetings cancelled (40.0% of 5, 2 leads)" in section
    assert "None" not in section and "nan" not in section


def test_no_booking_yet_is_zeros_and_none_never_nan():
    empty = {
        "booking_leads": pd.DataFrame(columns=["lead_id", "source", "captured_at"]),
        "booking_links": pd.DataFrame(columns=["lead_id", "created_at"]),
        "booking_assignments": pd.DataFrame(
            columns=["lead_id", "rule", "step", "assigned_at", "released_at"]
        ),
        "booking_meetings": pd.DataFrame(
            columns=["lead_id", "rep_code", "status", "booked_at", "cancelled_at"]
        ),
        "booking_activities": pd.DataFrame(columns=["lead_id", "rep", "activity_type"]),
    }
    figures = booking.figures(empty)
    assert figures["booking_rate"]["overall"] == {
        "linked": 0,
        "booked": 0,
        "cancelled_only": 0,
        "rate": None,
    }
    assert figures["speed_to_meeting"]["all"] == {"leads": 0, "median_s": None, "p90_s": None}
    assert figures["no_shows"]["overall"]["no_show_rate"] is None
    assert figures["cancellations"]["of_booked"] is None
    json.dumps(figures, allow_nan=False)
    section = "\n".join(kpi.booking_markdown(figures))
    assert "median n/a, p90 n/a over 0 leads" in section and "None" not in section


def test_durations_read_in_their_unit():
    assert [kpi._duration(s) for s in (None, 45, 750, 9000, 86400 * 3)] == [
        "n/a",
        "45 s",
        "12.5 min",
        "2.5 h",
        "3.0 days",
    ]
