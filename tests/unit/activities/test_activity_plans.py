"""Sales activities, the pure part: the walk over a lead's activities goes by time and a late
decision moves nothing; activities mappings name unknown fields; the example mapping reads a
plain export."""

from __future__ import annotations

import pandas as pd
import pytest

from leadflow.capture.activities import plan_moves
from leadflow.capture.rules import SourceMapping

from helpers import NOW, ROOT, write


@pytest.mark.unit
def test_the_walk_goes_by_time_and_a_late_decision_moves_nothing():
    t0 = pd.Timestamp(NOW)
    rows = pd.DataFrame(
        {
            "lead_id": [1, 1, 1, 2, 2],
            "lead_status": ["routed", "routed", "routed", "qualified", "qualified"],
            "rep_id": [7, 7, 7, 8, 8],
            "activity_type": ["won", "qualify", "accept", "accept", "lost"],
            "occurred_at": [t0 + pd.Timedelta(minutes=m) for m in (30, 20, 10, 5, 6)],
            "record_no": [2, 3, 4, 5, 6],
            "automated": False,
        }
    )
    errors, moves = plan_moves(rows, {1: 7, 2: 8}, "reroute")
    assert errors.isna().all()
    assert list(moves) == [
        [("qualified", "won")],
        [("accepted", "qualified")],
        [("routed", "accepted")],
        None,
        [("qualified", "lost")],
    ]
    # Not the holder any more: refused whatever the move.
    errors, _ = plan_moves(rows.iloc[[2]], {1: 9}, "reroute")
    assert errors.iloc[0] == "accept from a rep who no longer holds the lead (it was reassigned)"


@pytest.mark.unit
def test_an_activities_mapping_names_unknown_fields():
    with pytest.raises(ValueError, match="unknown field 'rep_name'"):
        SourceMapping(target="activities", columns={"Owner": "rep_name"})
    resolved = SourceMapping(target="activities").resolve(
        ["email", "rep", "activity_type", "occurred_at", "reason"]
    )
    assert resolved.required_columns() == ("email", "rep", "activity_type", "occurred_at")


@pytest.mark.unit
def test_the_example_activities_mapping_reads_a_plain_export(tmp_path):
    from leadflow.capture.rules import load_mapping
    from leadflow.capture.run import check_header
    from leadflow.capture.sources import MissingColumnsError

    example = ROOT / "rules" / "sources" / "crm_activities.yaml"
    mapping, _ = load_mapping(example)
    plain = write(
        tmp_path / "a.csv",
        "Activity ID,Lead Email,Assigned To,Type,Date\n1,a@b.com,ann,Disco Call,2026-11-02\n",
    )
    header, resolved = check_header(str(plain), mapping)
    assert resolved.target == "activities" and header[0] == "Activity ID"
    typo = write(
        tmp_path / "b.csv",
        "Activity ID,Lead Emial,Assigned To,Type,Date\n1,a@b.com,ann,call,2026-11-02\n",
    )
    with pytest.raises(MissingColumnsError, match="Lead Email"):
        check_header(str(typo), mapping)
