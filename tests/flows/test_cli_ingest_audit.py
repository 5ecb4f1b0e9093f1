"""The command line's contract for runs: ``ingest`` and ``audit`` as JSON, the audit
noticing what was changed behind the ledger's back, progress on stderr."""

import json

from sqlalchemy import delete, text

from leadflow import store
from leadflow import tables as t

from helpers import run_cli, write


def test_ingest_json_and_audit(database_url, tmp_path, capsys):
    path = write(
        tmp_path / "leads.csv", "email,first_name\na@x.com,A\nA@X.com ,A2\nb@x.com,B\nbroken,C\n"
    )
    code, out, _ = run_cli(
        capsys, "ingest", str(path), "--source", "web", "--json", "--max-quarantine-rate", "0.5"
    )
    assert code == 0
    data = json.loads(out)
    assert {k: data[k] for k in ("received", "inserted", "merged", "quarantined")} == {
        "received": 4,
        "inserted": 2,
        "merged": 1,
        "quarantined": 1,
    }
    assert isinstance(data["batch_id"], int)
    code, out, _ = run_cli(capsys, "audit", "--json")
    assert code == 0 and json.loads(out)["ok"] is True

    # Tamper with the evidence: a quarantined record disappears. The audit must notice.
    with store.get_engine(database_url).begin() as conn:
        conn.execute(delete(t.quarantine).where(t.quarantine.c.record_no == 5))
    code, out, _ = run_cli(capsys, "audit", "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert any("4 records should be accounted for but 3 distinct" in p for p in report["problems"])
    assert any("1 quarantined but 0 quarantine rows" in p for p in report["problems"])


def test_audit_notices_a_lead_dropped_behind_the_ledgers_back(database_url, tmp_path, capsys):
    path = write(tmp_path / "leads.csv", "email\na@x.com\nb@x.com\n")
    assert run_cli(capsys, "ingest", str(path), "--source", "web")[0] == 0
    with store.get_engine(database_url).begin() as conn:
        conn.execute(text("UPDATE leads SET status = 'mql' WHERE email = 'a@x.com'"))
    code, out, _ = run_cli(capsys, "audit")
    assert code == 1 and "status differs from their last ledger transition" in out


def test_progress_goes_to_stderr_and_json_stays_clean(sqlite_url, tmp_path, capsys, monkeypatch):
    path = write(tmp_path / "leads.csv", "email\n" + "".join(f"p{n}@x.com\n" for n in range(50)))
    monkeypatch.setenv("LEADFLOW_PROGRESS", "1")
    code, out, err = run_cli(capsys, "ingest", str(path), "--source", "web", "--json")
    assert code == 0 and json.loads(out)["inserted"] == 50  # stdout: the JSON and nothing else
    assert "capture: leads" in err and "50" in err
    code, out, err = run_cli(capsys, "run", "--json")
    assert code == 0 and "enrich: leads" in err and "score: leads" in err
    monkeypatch.setenv("LEADFLOW_PROGRESS", "0")
    code, out, err = run_cli(capsys, "ingest", str(path), "--source", "web2", "--json")
    assert "capture: leads" not in err
