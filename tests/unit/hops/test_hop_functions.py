"""The hops' pure functions on a few rows: no database, no Prefect server."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from leadflow import lifecycle, order
from leadflow.enrich import hop as enrich
from leadflow.enrich.firmographics import Company
from leadflow.lifecycle import Status
from leadflow.scoring import hop as score_hop
from leadflow.scoring.rules import parse_rules

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
STARTED = datetime(2026, 11, 1, 12, 5, tzinfo=UTC)


def test_enrich_batch_marks_pending_when_the_provider_was_down():
    leads = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "status": ["captured", "captured", "enrichment_pending"],
            "email": ["ann@acme.com", "bob@gmail.com", "cat@globex.com"],
            "title": ["VP Engineering", "student", "CFO"],
            "phone": [None, None, None],
            "country": ["US", "GB", "DE"],
            "company": ["Acme Inc", "Initech", "Globex"],
            "website": [None, None, None],
        }
    )
    accounts = pd.DataFrame(
        {
            "id": [7],
            "name": ["Acme"],
            "domain": ["acme.com"],
            "aliases": [None],
            "owner_rep_id": [3],
        }
    )
    context = enrich.EnrichContext(
        provider=object(),  # any provider: the answers below are what it said
        accounts=enrich.build_index(accounts, enrich.load_lists().legal_suffixes),
        threshold=0.9,
        min_name_length=3,
        started=STARTED,
    )
    lookups = enrich.Lookups(
        answers={
            "acme.com": Company(status="found", industry="Software", employees=250),
            "globex.com": Company(status="unavailable"),
        },
        stats={"found": 1},
    )
    result = enrich.enrich_batch(leads, lookups, context, NOW)
    changes = result.changes.set_index("id")
    assert changes["to_status"].to_dict() == {1: "enriched", 2: "enriched", 3: "enrichment_pending"}
    assert changes.loc[1, "industry"] == "Software" and changes.loc[1, "employees"] == 250
    assert changes.loc[1, "account_id"] == 7 and changes.loc[1, "account_owner_rep_id"] == 3
    assert changes.loc[2, "email_type"] == "free"
    assert changes.loc[3, "reason"] == "firmographics provider unavailable"
    assert (changes["enrich_attempted_at"] == pd.Timestamp(STARTED)).all()
    assert list(result.checked["id"]) == [1, 2, 3] and result.stats["accounts_matched"] == 1


RULES = parse_rules(
    """
fit:
  - {name: senior, when: {field: seniority, in: [C-level, VP]}, points: 60}
  - {name: free_mail, when: {field: email_type, equals: free}, points: -10}
normalise: {min: -10, max: 100}
bands: {hot: 70, warm: 40}
mql_threshold: 50
disqualify:
  - {name: student, when: {field: seniority, equals: Student}}
""",
    "test",
)


def scored_leads(statuses: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3],
            "status": statuses,
            "score": [None, 10.0, 90.0],
            "temperature": [None, "cold", "hot"],
            "score_version": [None, "old", "old"],
            "seniority": ["VP", "Manager", "Student"],
            "email_type": ["business", "free", "business"],
        }
    )


def test_score_batch_decides_explains_and_keeps_history():
    context = score_hop.ScoreContext(RULES, "v1", "text")
    leads = scored_leads(["enriched"] * 3)
    events = pd.DataFrame(columns=["lead_id", "event_type", "occurred_at", "url"])
    result = score_hop.score_batch(leads, events, context, NOW)
    changes = result.changes.set_index("id")
    assert changes["to_status"].to_dict() == {1: "mql", 2: "nurturing", 3: "disqualified"}
    assert changes.loc[1, "reason"] and (changes["score_version"] == "v1").all()
    assert list(result.rows["lead_scores"]["lead_id"]) == [1, 2, 3]
    assert result.report is None and result.stats["scored"] == 3


def test_a_rescore_reports_its_diff_and_never_moves_an_owned_lead():
    context = score_hop.ScoreContext(RULES, "v2", "text", mode="rescore")
    leads = scored_leads(["nurturing", "mql", "routed"])
    events = pd.DataFrame(columns=["lead_id", "event_type", "occurred_at", "url"])
    result = score_hop.score_batch(leads, events, context, NOW)
    assert result.changes["to_status"].tolist() == ["mql", "nurturing", "routed"]
    assert result.report[["id", "status", "to_status"]].values.tolist() == [
        [1, "nurturing", "mql"],
        [2, "mql", "nurturing"],
        [3, "routed", "routed"],
    ]


@pytest.mark.parametrize(
    ("current", "decision", "mode", "expected"),
    [
        ("enriched", "mql", "new", "mql"),
        ("mql", "nurturing", "engaged", "mql"),  # engagement never demotes an MQL
        ("mql", "nurturing", "rescore", "nurturing"),
        ("nurturing", "disqualified", "engaged", "disqualified"),
        ("accepted", "disqualified", "rescore", "accepted"),  # a rep owns it
    ],
)
def test_next_status(current, decision, mode, expected):
    assert score_hop.next_status(current, decision, mode) == expected


def test_status_sets_are_lifecycle_statuses_and_every_move_they_imply_is_allowed():
    assert lifecycle.MOVABLE_BY_SCORE <= lifecycle.SCORED
    assert lifecycle.OWNED <= lifecycle.SCORED
    for hop in order.PIPELINE:
        assert all(isinstance(status, Status) for status in hop.inputs)
    for current in lifecycle.MOVABLE_BY_SCORE:
        for decision in ("mql", "nurturing", "disqualified"):
            target = score_hop.next_status(current, decision, "rescore")
            if target != current:
                lifecycle.check(current, target)
