"""The ledger audit's pure steps: each batch invariant on a batch row and the counts that
back it, the lead total, and the cap on problems listed (the audit over a database is in
store/test_lane.py and flows/test_cli_ingest_audit.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from leadflow import audit

pytestmark = pytest.mark.unit


def batch(**fields: Any) -> SimpleNamespace:
    row = dict(id=7, source="crm", target="leads", content_hash="h", status="complete")
    row.update(received=5, inserted=3, merged=1, quarantined=1)
    row.update(fields)
    return SimpleNamespace(**row)


def backing(**fields: Any) -> audit.BatchBacking:
    """Everything a complete leads batch 7 (5 received: 3 in, 1 merged, 1 quarantined)
    should have, unless ``fields`` says otherwise."""
    sums = SimpleNamespace(received=5, inserted=3, merged=1, quarantined=1)
    counts: dict[str, Any] = dict(
        raw_records={7: 5},
        stored={"events": {}, "activities": {}},
        records={7: (5, 5)},
        chunks={7: sums},
        quarantine_rows={7: 1},
        admissions={7: 3},
        merges={7: 1},
    )
    counts.update(fields)
    return audit.BatchBacking(**counts)


def test_a_batch_backed_by_its_rows_has_no_problem():
    assert audit.batch_problems(batch(), backing(), alive=False) == []


def test_every_batch_invariant_names_the_batch_and_both_numbers():
    problems = audit.batch_problems(
        batch(quarantined=2),
        backing(
            raw_records={7: 4},
            records={7: (6, 5)},
            chunks={},
            quarantine_rows={},
            admissions={7: 2},
            merges={},
        ),
        alive=False,
    )
    assert problems == [
        "batch 7: received 5 != inserted 3 + merged 1 + quarantined 2",
        "batch 7: received 5 but its chunks say 0",
        "batch 7: inserted 3 but its chunks say 0",
        "batch 7: merged 1 but its chunks say 0",
        "batch 7: quarantined 2 but its chunks say 0",
        "batch 7: received 5 but the raw chunks hold 4 records",
        "batch 7: 5 records should be accounted for but 5 distinct records are, by ledger, "
        "events and quarantine (6 entries)",
        "batch 7: 2 quarantined but 0 quarantine rows",
        "batch 7: 3 inserted but 2 admission events",
        "batch 7: 1 merged but 0 merge events",
    ]


def test_an_events_batch_stores_one_row_per_insert_and_none_per_repeat():
    events = batch(target="events")
    # 5 received, 1 a repeat: 4 records accounted for, 3 rows stored; no ledger events.
    good = backing(stored={"events": {7: 3}, "activities": {}}, records={7: (4, 4)})
    assert audit.batch_problems(events, good, alive=False) == []
    short = backing(stored={"events": {7: 2}, "activities": {}}, records={7: (5, 5)})
    assert audit.batch_problems(events, short, alive=False) == [
        "batch 7: 4 records should be accounted for but 5 distinct records are, by ledger, "
        "events and quarantine (5 entries)",
        "batch 7: 3 events inserted but 2 stored",
    ]


def test_a_running_batch_is_only_checked_for_a_dead_run_and_records_counted_twice():
    running = batch(status="running", received=9)  # its numbers need not add up yet...
    assert audit.batch_problems(running, backing(records={7: (2, 2)}), alive=True) == [
        "batch 7: received 9 != inserted 3 + merged 1 + quarantined 1"  # ...but still must
    ]
    assert audit.batch_problems(
        batch(status="running"), backing(records={7: (3, 2)}, chunks={}), alive=False
    ) == [
        "batch 7: still 'running' but its run has died; ingest the same input again "
        "(same source) to resume it after its last committed chunk",
        "batch 7: 1 record(s) counted more than once (3 entries for 2 records)",
    ]


def test_the_leads_stored_are_the_lead_batches_inserts():
    batches = [batch(inserted=3), batch(status="running", inserted=2), batch(target="events")]
    assert audit.leads_match_batches(5, batches) == []
    assert audit.leads_match_batches(6, batches) == ["6 leads stored but lead batches inserted 5"]


@pytest.mark.parametrize(
    ("max_listed", "listed"),
    [
        (3, ["a", "b", "c"]),
        (2, ["a", "b", audit.MORE_PROBLEMS]),
        (0, [audit.MORE_PROBLEMS]),
        (-1, []),
    ],
)
def test_problems_past_max_listed_are_one_line(max_listed, listed):
    report = audit.AuditReport()
    problems = audit.ProblemList(report.problems, max_listed)
    problems.add(["a", "b"])
    problems.add([])
    problems.add(["c"])
    assert report.problems == listed
    assert report.ok is (listed == [])
