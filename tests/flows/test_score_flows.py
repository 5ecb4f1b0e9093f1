"""Scoring flows end to end on SQLite and PostgreSQL: score, events, rescore, explain."""

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from app import cli
from leadflow import lifecycle, store

from helpers import assert_ledger_ok, ingest, table, write

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
RULES = """
name: test
fit:
  - {name: senior, when: {field: seniority, in: [C-level, VP]}, points: 30}
  - {name: free_mail, when: {field: email_type, equals: free}, points: -10}
  - {name: demo, when: {field: attributes.lead_form, equals: demo_request}, points: 10}
engagement:
  - {name: pricing, event: page_view, url: /pricing, points: 15, cap: 45, half_life_days: 7}
normalise: {min: -10, max: 90}
bands: {hot: 70, warm: 40}
mql_threshold: 60
fast_track:
  - {name: ceo_demo, when: {all: [{field: seniority, equals: C-level}, {field: attributes.lead_form, equals: demo_request}]}}
disqualify:
  - {name: student, when: {field: seniority, equals: Student}}
"""
LEADS = (
    "email,title,lead_form\n"
    "ceo@acme.com,CEO,demo_request\n"  # fast track -> mql
    "kid@uni.edu,Student,demo_request\n"  # disqualified
    "mgr@gmail.com,Marketing Manager,\n"  # nurturing (will engage later)
    "vp@beta.io,VP Sales,ebook\n"  # 30 pts -> 40 -> nurturing
)


@pytest.fixture
def scored(database_url, tmp_path):
    rules = write(tmp_path / "rules.yaml", RULES)
    ingest(write(tmp_path / "leads.csv", LEADS), now=NOW)
    from flows.enrich import enrich
    from flows.score import score

    assert enrich(now=NOW, return_state=True).is_completed()
    state = score(now=NOW, rules=str(rules), return_state=True)
    assert state.is_completed(), state.message
    return rules, state.result()


def statuses(url):
    return table(url, "leads").set_index("email")["status"].to_dict()


def test_score_decides_and_keeps_history(database_url, scored, capsys):
    rules, summary = scored
    assert statuses(database_url) == {
        "ceo@acme.com": "mql",
        "kid@uni.edu": "disqualified",
        "mgr@gmail.com": "nurturing",
        "vp@beta.io": "nurturing",
    }
    assert (summary["scored"], summary["mql"], summary["nurturing"], summary["disqualified"]) == (
        4,
        1,
        2,
        1,
    )
    leads = table(database_url, "leads").set_index("email")
    ceo = leads.loc["ceo@acme.com"]
    assert (
        ceo.score == 50.0 and ceo.temperature == "warm" and ceo.score_version == summary["version"]
    )
    assert leads.loc["vp@beta.io", "score"] == 40.0
    history = table(database_url, "lead_scores")
    assert len(history) == 4 and set(history.version) == {summary["version"]}
    assert table(database_url, "rule_sets").text.iloc[0] == rules.read_text()
    reasons = table(database_url, "lead_events").query("to_status == 'mql'").reason.tolist()
    assert reasons == [f"fast track: ceo_demo; score 50 (rules {summary['version']})"]
    assert_ledger_ok(database_url)
    code = cli.main(["explain", str(int(ceo.id))])
    out = capsys.readouterr().out
    assert code == 0 and "score 50 (warm), decision mql" in out
    assert "+30  senior" in out and "seniority in ['C-level', 'VP']" in out
    assert "enriched -> mql: fast track: ceo_demo" in out


def test_engagement_changes_the_score_on_the_next_run(database_url, scored, tmp_path):
    rules, _ = scored
    events = write(
        tmp_path / "events.csv",
        "email,event_type,occurred_at,url\n"
        f"vp@beta.io,Page View,{(NOW - timedelta(days=1)).isoformat()},/pricing\n"
        f"vp@beta.io,pageview,{NOW.isoformat()},https://x.example/pricing?plan=pro\n"
        f"nobody@nowhere.com,page_view,{NOW.isoformat()},/pricing\n"
        f"vp@beta.io,telepathy,{NOW.isoformat()},\n",
    )
    state, data = ingest(events, target="events", now=NOW, max_quarantine_rate=0.6)
    assert state.is_completed(), state.message
    assert (data["received"], data["inserted"], data["quarantined"]) == (4, 2, 2)
    reasons = sorted(
        map(tuple, table(database_url, "quarantine").query("batch_id.notna()").reasons)
    )
    assert reasons == [("event_type_known",), ("lead_known",)]
    # The same file again is a no-op; the same events in another file merge.
    again = write(
        tmp_path / "again.csv",
        events.read_text().splitlines()[0] + "\n" + events.read_text().splitlines()[1] + "\n",
    )
    _, data = ingest(again, target="events", now=NOW)
    assert (data["received"], data["inserted"], data["merged"]) == (1, 0, 1)

    from flows.score import score

    state = score(now=NOW, rules=str(rules), return_state=True)
    summary = state.result()
    assert summary["rescored_engaged"] == 1 and summary["mql"] == 1
    vp = table(database_url, "leads").set_index("email").loc["vp@beta.io"]
    # 30 + 15 * 0.5**(1/7) + 15 = ~58.6 points -> (58.6 + 10) / 100
    assert vp.status == "mql" and vp.score == pytest.approx(68.6, abs=0.1)
    # Nothing new since: the next run rescores nobody.
    assert score(now=NOW, rules=str(rules), return_state=True).result()["rescored_engaged"] == 0
    assert_ledger_ok(database_url)


def test_rescore_dry_run_shows_the_diff_and_apply_changes_it(database_url, scored, tmp_path):
    _, _summary = scored
    looser = write(
        tmp_path / "looser.yaml",
        RULES.replace("mql_threshold: 60", "mql_threshold: 35").replace(
            "- {name: free_mail, when: {field: email_type, equals: free}, points: -10}",
            "- {name: free_mail, when: {field: email_type, equals: free}, points: 0}",
        ),
    )
    # A rep owns the CEO already: a rescore must not pull that lead back.
    ceo = table(database_url, "leads").set_index("email").loc["ceo@acme.com"]
    with store.get_engine(database_url).begin() as conn:
        lifecycle.apply(
            conn,
            pd.DataFrame({"id": [int(ceo.id)], "from_status": ["mql"], "to_status": ["routed"]}),
            actor="test",
            at=NOW,
        )
    from flows.score import rescore

    state = rescore(rules=str(looser), dry_run=True, now=NOW, return_state=True)
    diff = state.result()
    assert (diff["leads"], diff["new_mql"], diff["lost_mql"]) == (3, 1, 0)
    assert diff["temperature_transitions"]["warm"]["warm"] == 2  # the CEO and the VP
    assert diff["temperature_transitions"]["cold"]["cold"] == 1  # the manager: score 0 -> 10
    assert statuses(database_url)["vp@beta.io"] == "nurturing"  # nothing applied
    movers = {m["lead_id"]: m for m in diff["biggest_movers"]}
    mgr_id = int(table(database_url, "leads").set_index("email").loc["mgr@gmail.com", "id"])
    assert movers[mgr_id]["moved_by"] == "free_mail +10"

    state = rescore(rules=str(looser), dry_run=False, now=NOW, return_state=True)
    assert state.is_completed()
    after = statuses(database_url)
    assert after == {
        "ceo@acme.com": "routed",
        "kid@uni.edu": "disqualified",
        "mgr@gmail.com": "nurturing",
        "vp@beta.io": "mql",
    }
    leads = table(database_url, "leads").set_index("email")
    assert set(leads.loc[["ceo@acme.com", "vp@beta.io", "mgr@gmail.com"], "score_version"]) == {
        diff["version"]
    }
    # Tighten again: the VP is a lost MQL and goes back to nurturing.
    stricter = write(
        tmp_path / "stricter.yaml", RULES.replace("mql_threshold: 60", "mql_threshold: 90")
    )
    diff = rescore(rules=str(stricter), dry_run=False, now=NOW, return_state=True).result()
    assert diff["lost_mql"] == 1 and statuses(database_url)["vp@beta.io"] == "nurturing"
    assert statuses(database_url)["ceo@acme.com"] == "routed"
    assert_ledger_ok(database_url)


def test_invalid_rules_stop_before_any_lead_is_touched(database_url, tmp_path, capsys):
    ingest(write(tmp_path / "leads.csv", LEADS), now=NOW)
    from flows.enrich import enrich

    enrich(now=NOW, return_state=True)
    bad = write(tmp_path / "bad.yaml", RULES.replace("field: seniority, in", "field: rank, in"))
    code = cli.main(["score", "--rules", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "bad.yaml" in err and "unknown field 'rank'" in err
    assert set(statuses(database_url).values()) == {"enriched"}
    assert table(database_url, "lead_scores").empty


def test_rescore_scope_by_status_and_condition(database_url, scored, tmp_path):
    from flows.score import rescore
    from leadflow.scoring.hop import parse_scope

    assert parse_scope("status:nurturing")[0] == ["nurturing"]
    with pytest.raises(Exception, match="unknown or unscored"):
        parse_scope("status:captured")
    rules, _ = scored
    diff = rescore(
        rules=str(rules),
        scope="where: {field: email_type, equals: free}",
        now=NOW,
        return_state=True,
    ).result()
    assert diff["leads"] == 1  # the manager at gmail (the student is disqualified, out of scope)
    assert json.dumps(diff)  # the diff is plain data


def test_leads_scored_for_the_first_time_have_seen_the_events_before_them(database_url, tmp_path):
    """A new lead's first score counts its engagement so far: the engaged pass of the same
    run must not score it again (each lead scored once, one history row each)."""
    rules = write(tmp_path / "rules.yaml", RULES)
    ingest(write(tmp_path / "leads.csv", LEADS), now=NOW)
    events = write(
        tmp_path / "events.csv",
        "email,event_type,occurred_at,url\n"
        "vp@beta.io,page_view,2026-10-30T10:00:00Z,/pricing\n"
        "mgr@gmail.com,page_view,2026-10-30T11:00:00Z,/pricing\n",
    )
    state, _ = ingest(events, target="events", now=NOW)
    assert state.is_completed(), state.message
    from flows.enrich import enrich
    from flows.score import score

    assert enrich(now=NOW, return_state=True).is_completed()
    summary = score(now=NOW, rules=str(rules), return_state=True).result()
    assert (summary["scored"], summary["rescored_engaged"]) == (4, 0)
    assert len(table(database_url, "lead_scores")) == 4
    # A run with both passes (a new lead, and new engagement for a nurturing one): each
    # gate verdict names its own batch.
    ingest(write(tmp_path / "more.csv", "email,title\nnew@gamma.io,CTO\n"), now=NOW)
    ingest(
        write(
            tmp_path / "more_events.csv",
            "email,event_type,occurred_at,url\nmgr@gmail.com,page_view,2026-10-31T09:00:00Z,/pricing\n",
        ),
        target="events",
        now=NOW,
    )
    assert enrich(now=NOW, return_state=True).is_completed()
    again = score(now=NOW, rules=str(rules), return_state=True).result()
    assert (again["scored"], again["rescored_engaged"]) == (1, 1)
    refs = table(database_url, "dq_results").query("hop == 'scored'")["batch_ref"]
    assert len(refs) == 3 and refs.is_unique


def test_a_rule_that_fires_on_no_lead_is_reported(database_url, scored, tmp_path):
    """A typo'd attribute (lead_from for lead_form) is warned about when the rules are
    loaded, and the rescore and the backtest both say the rule fired on 0 leads."""
    typo = write(
        tmp_path / "typo.yaml",
        RULES.replace(
            "attributes.lead_form, equals: demo_request}, points: 10",
            "attributes.lead_from, equals: demo_request}, points: 10",
        ),
    )
    assert "attributes.lead_from" in typo.read_text()
    from flows.score import rescore

    diff = rescore(rules=str(typo), dry_run=True, now=NOW, return_state=True).result()
    assert "rule demo fired on 0 leads" in diff["warnings"]
    assert any("attributes.lead_from" in w and "none of the" in w for w in diff["warnings"])
    assert not any("senior" in w for w in diff["warnings"])
    from leadflow.scoring.replay import diff_markdown

    assert "rule demo fired on 0 leads" in diff_markdown(diff)
