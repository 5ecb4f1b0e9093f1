"""Migrations match the tables the code uses; the command line's contract."""

import json
from datetime import UTC, datetime

import pandas as pd
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, text

from app import cli
from app.generate import DEFECTS, generate
from leadflow import store
from leadflow import tables as t

from conftest import write


def test_migrations_create_exactly_the_declared_schema(database_url):
    with store.get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
    assert diff == []


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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


def test_missing_column_is_a_clear_error_exit_2(database_url, tmp_path, capsys):
    path = write(tmp_path / "leads.csv", "name\nA\n")
    code, out, err = run_cli(capsys, "ingest", str(path), "--source", "web", "--json")
    assert code == 2 and out == ""
    assert "leads.csv: required column(s) 'email' missing" in err


def test_bad_mapping_names_file_field_and_value(sqlite_url, tmp_path, capsys):
    mapping = write(
        tmp_path / "m.yaml", "columns:\n  Email: e-mail\nmerge:\n  default: sometimes\n"
    )
    code, _, err = run_cli(capsys, "ingest", "x.csv", "--source", "web", "--mapping", str(mapping))
    assert code == 2
    assert "m.yaml: columns: Value error, column 'Email' maps to unknown field 'e-mail'" in err
    assert (
        "m.yaml: merge.default: Input should be 'newest_non_empty' or 'oldest_non_empty' (value: 'sometimes')"
        in err
    )


def test_generate_is_seeded_and_has_the_promised_defects(tmp_path):
    now = datetime(2026, 11, 1, tzinfo=UTC)
    a = generate(tmp_path / "a", leads=4000, seed=3, now=now)
    b = generate(tmp_path / "b", leads=4000, seed=3, now=now)
    assert a["leads"].read_bytes() == b["leads"].read_bytes()
    leads = pd.read_csv(a["leads"], dtype=str)
    n = len(leads)
    emails = leads["email"].dropna()
    folded = emails.str.strip().str.lower()
    dupes = folded.duplicated().sum()
    assert abs(dupes / n - DEFECTS["duplicate"]) < 0.015
    assert (emails != emails.str.strip()).any() and (emails.str.strip() != folded).any()
    assert abs(leads["email"].isna().mean() - DEFECTS["no_identity"]) < 0.004
    assert set(leads["outcome"].dropna()) == {"won", "lost"}
    events = pd.read_csv(a["events"])
    assert {"page_view", "form_fill", "meeting_booked"} <= set(events["event_type"])
    assert 3.5 < len(events) / n < 7
    for name in ("accounts", "reps", "firmographics"):
        assert len(pd.read_csv(a[name])) > 0


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
