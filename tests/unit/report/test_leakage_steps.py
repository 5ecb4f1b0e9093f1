"""The leakage report's pure steps: why a lead is listed, and the listing's ``since`` and
``hours`` (the report over a database is in store/test_leakage.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from leadflow.kpi import leakage

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 20, 14, 30, tzinfo=UTC)


def test_an_unworked_lead_says_which_cadence_ended_or_that_none_would_take_it():
    cadences = pd.Series(["welcome", None, float("nan")], dtype=object)
    reasons = pd.Series(["finished", None, None], dtype=object)
    assert leakage.why_unworked(cadences, reasons) == [
        "last cadence welcome ended: finished",
        "no cadence's entry criteria hold",
        "no cadence's entry criteria hold",
    ]


def test_a_dead_claim_names_the_hop_and_the_host_when_known():
    tokens = pd.Series(["enrich:3f2a", "route:9"])
    holders = pd.Series(["worker-1:812", None], dtype=object)
    assert leakage.why_dead_claim(tokens, holders) == [
        "claimed by enrich run on worker-1:812 that stopped renewing its claim "
        "(leadflow claims --release)",
        "claimed by route run that stopped renewing its claim (leadflow claims --release)",
    ]


def test_the_listing_joins_the_kinds_with_since_and_hours():
    stuck = pd.DataFrame(
        {
            "lead_id": [4],
            "status": ["mql"],
            "since": [pd.Timestamp("2026-11-20 09:00", tz="UTC")],
            "kind": ["stuck"],
            "why": ["in mql longer than the 4h allowed"],
        }
    )
    dead = stuck.assign(lead_id=[9], since=[pd.Timestamp("2026-11-18 14:12", tz="UTC")])
    listed = leakage.listing([stuck, dead], NOW)
    assert listed["lead_id"].tolist() == [4, 9]
    assert listed["since"].tolist() == ["2026-11-20 09:00", "2026-11-18 14:12"]
    assert listed["hours"].tolist() == [5.5, 48.3]


def test_an_empty_listing_keeps_its_columns():
    listed = leakage.listing([], NOW)
    assert listed.empty
    assert list(listed.columns) == ["lead_id", "status", "since", "kind", "why"]
