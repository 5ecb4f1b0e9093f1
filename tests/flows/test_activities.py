"""Sales activities captured like leads and events, on SQLite and PostgreSQL: vendor spellings
mapped, dispositions moving leads through the lifecycle in time order, illegal moves and
activities from reps who did not hold the lead quarantined with the reason, the same activity
twice counted once, a reject rerouting away from (or recycling past) the rep, and captured
activities meeting SLA timers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd

from helpers import NOW, ROOT, check, owners, routed_hot_leads, run_route, table, write

MAPPING = """
source: crm
target: activities
columns:
  Activity ID: activity_id
  Lead Email: email
  Assigned To: rep
  Type: activity_type
  Date: occurred_at
  Notes: reason
  Bot: automated
optional: [Notes, Bot]
"""
HEADER = ["Activity ID", "Lead Email", "Assigned To", "Type", "Date", "Notes", "Bot"]


def at(minutes: float) -> str:
    return (NOW + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def export(tmp_path: Path, name: str, rows: list[list]) -> str:
    frame = pd.DataFrame(rows, columns=HEADER)
    path = tmp_path / "exports" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return str(path)


def ingest(database_url: str, tmp_path: Path, path: str, minutes: float = 3 * 24 * 60) -> dict:
    from flows.capture import capture

    mapping = write(tmp_path / "crm.yaml", MAPPING)
    state = capture(
        path,
        source="crm",
        mapping_path=str(mapping),
        now=NOW + timedelta(minutes=minutes),
        max_quarantine_rate=0.9,
        database_url=database_url,
        return_state=True,
    )
    assert state.is_completed(), state.message
    return state.result()


def statuses(database_url: str) -> dict[int, str]:
    leads = table(database_url, "leads")
    return dict(zip(leads["id"].astype(int), leads["status"], strict=True))


def reasons(database_url: str) -> dict[int, list[str]]:
    q = table(database_url, "quarantine").query("hop == 'capture'")
    return {int(n): list(r) for n, r in zip(q["record_no"], q["reasons"], strict=True)}


def assert_batches_accounted(database_url: str) -> None:
    """The audit's verdict on every batch (the leads here were made by the test, not captured)."""
    from leadflow import audit, store

    with store.get_engine(database_url).connect() as conn:
        report = audit.run_audit(conn)
    assert report.batches >= 1
    assert [p for p in report.problems if p.startswith("batch")] == []


def test_dispositions_move_leads_and_bad_activities_are_quarantined(database_url, tmp_path):
    a, b, c = routed_hot_leads(database_url, tmp_path, 3)
    held = owners(database_url)
    other = {"ann": "bob", "bob": "ann"}
    email = {i: f"lead{i}@buyer{i}.com" for i in (a, b, c)}

    def rep(i: int) -> str:
        return f"{held[i]}@reps.example"

    path = export(
        tmp_path,
        "week1.csv",
        [
            # a: worked in order, but listed out of order: the walk goes by time.
            ["A-3", email[a], rep(a), "Qualified", at(60), "", ""],
            ["A-1", email[a], rep(a), "Logged Call", at(5), "", ""],
            ["A-2", email[a], rep(a).upper(), "Accepted", at(10), "", ""],
            ["A-4", email[a], held[a], "Closed Won", at(2 * 24 * 60), "", ""],
            # b: won before it was accepted; a call from a rep who never held it.
            ["B-1", email[b], rep(b), "Closed Won", at(7), "", ""],
            ["B-2", email[b], f"{other[held[b]]}@reps.example", "Logged Call", at(8), "", ""],
            ["B-3", email[b], rep(b), "Closed Lost", at(9), "", ""],
            # c: rejected with a reason, then the same rep acts on it again.
            ["C-1", email[c], rep(c), "Rejected", at(4), "wrong territory", ""],
            ["C-2", email[c], rep(c), "Logged Call", at(6), "", ""],
            # an automated touch names no rep and is kept, never counted as a rep's.
            ["N-1", email[c], "", "Email Sent", at(1), "", "yes"],
            ["X-1", "nobody@nowhere.example", rep(a), "Logged Call", at(3), "", ""],
            ["X-2", email[a], "zed@reps.example", "Logged Call", at(3), "", ""],
            ["X-3", email[a], rep(a), "Fax", at(3), "", ""],
            ["X-4", email[a], rep(a), "Logged Call", at(9 * 24 * 60), "", ""],
        ],
    )
    data = ingest(database_url, tmp_path, path)
    assert {k: data[k] for k in ("received", "inserted", "merged", "quarantined")} == {
        "received": 14,
        "inserted": 6,
        "merged": 0,
        "quarantined": 8,
    }
    assert data["effects"] == {"accepted": 1, "qualified": 1, "won": 1, "rejected": 1}
    now = statuses(database_url)
    assert (now[a], now[b], now[c]) == ("won", "routed", "mql")
    leads = table(database_url, "leads").set_index("id")
    assert leads.loc[a, "outcome"] == "won" and pd.isna(leads.loc[c, "owner_rep_id"])
    got = reasons(database_url)
    # record numbers are file lines (the header is line 1)
    assert got[6][0].startswith("legal_move: won: routed -> won is not allowed")
    assert got[7] == ["rep_owned_lead: the rep did not hold this lead when the activity happened"]
    assert got[8] == ["reason_given: lost needs a reason"]
    assert got[10][0].startswith("legal_move: the rep rejected this lead at")
    assert got[12] == ["lead_known"]
    assert got[13] == ["rep_known: no rep with that email or code"]
    assert got[14] == ["activity_type_known"]
    assert got[15] == ["occurred_at_valid: occurred_at is after now"]
    activities = table(database_url, "activities")
    assert sorted(activities["activity_type"]) == sorted(
        ["call", "accept", "qualify", "won", "reject", "email"]
    )
    assert activities.query("automated")["rep_id"].isna().all()
    # Each move is one ledger row at the activity's time, by the activities actor.
    ledger = table(database_url, "lead_events").query("actor == 'activities'")
    assert list(ledger.query("lead_id == @a")["to_status"]) == ["accepted", "qualified", "won"]
    moved_at = pd.to_datetime(ledger.query("lead_id == @a")["occurred_at"], utc=True)
    assert list(moved_at) == [NOW + timedelta(minutes=m) for m in (10, 60, 2 * 24 * 60)]
    assert ledger.query("lead_id == @c")["reason"].iloc[0] == "reject: wrong territory"
    assignments = table(database_url, "assignments").set_index("lead_id")
    assert assignments.loc[c, "released_reason"] == "rejected: wrong territory"
    assert_batches_accounted(database_url)

    # The next export repeats two activities and adds a late, earlier "accept" for a: the
    # repeats count once, the late accept is kept and moves nothing.
    again = export(
        tmp_path,
        "week1-again.csv",
        [
            ["A-1", email[a], rep(a), "Logged Call", at(5), "", ""],
            ["C-1", email[c], rep(c), "Rejected", at(4), "wrong territory", ""],
            ["A-0", email[a], rep(a), "accept", at(8), "", ""],
        ],
    )
    data = ingest(database_url, tmp_path, again)
    assert (data["inserted"], data["merged"], data["quarantined"]) == (1, 2, 0)
    assert data.get("effects", {}) == {}
    assert statuses(database_url)[c] == "mql"
    assert_batches_accounted(database_url)

    # Routing again never hands c back to the rep who rejected it.
    run_route(database_url, tmp_path)
    assert owners(database_url)[c] == other[held[c]]


def test_reject_recycles_when_the_policy_says_so(database_url, tmp_path, monkeypatch):
    rules = tmp_path / "rules"
    text = (ROOT / "rules" / "sla.yaml").read_text()
    write(rules / "sla.yaml", text.replace("reject: reroute", "reject: recycle"))
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(rules))
    (lead,) = routed_hot_leads(database_url, tmp_path, 1)
    rep = f"{owners(database_url)[lead]}@reps.example"
    path = export(
        tmp_path,
        "r.csv",
        [["R-1", f"lead{lead}@buyer{lead}.com", rep, "declined", at(3), "no budget", ""]],
    )
    data = ingest(database_url, tmp_path, path)
    assert data["inserted"] == 1 and data["effects"] == {"rejected": 1}
    ledger = table(database_url, "lead_events").query("actor == 'activities'")
    assert list(zip(ledger["from_status"], ledger["to_status"], strict=True)) == [
        ("routed", "recycled"),
        ("recycled", "nurturing"),
    ]
    assert statuses(database_url)[lead] == "nurturing"
    assert_batches_accounted(database_url)


def test_captured_activities_meet_sla_timers(database_url, tmp_path):
    (lead,) = routed_hot_leads(database_url, tmp_path, 1)
    rep = f"{owners(database_url)[lead]}@reps.example"
    check(database_url, tmp_path, NOW)
    path = export(
        tmp_path,
        "s.csv",
        [
            ["S-1", f"lead{lead}@buyer{lead}.com", "", "email", at(2), "", "true"],
            ["S-2", f"lead{lead}@buyer{lead}.com", rep, "Phone Call", at(11), "", ""],
        ],
    )
    ingest(database_url, tmp_path, path, minutes=20)
    check(database_url, tmp_path, NOW + timedelta(minutes=20))
    timer = table(database_url, "sla_timers").query("policy == 'hot-first-touch'").iloc[0]
    assert (timer["closed_reason"], timer["business_minutes"]) == ("met", 11)
    assert table(database_url, "sla_breaches").empty
