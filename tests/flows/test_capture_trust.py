"""Capture you can trust (issue 8), in this process: typos, identical merges, exit codes,
personal data in messages, the audit, the quarantine and ``explain``, on real SQLite and
PostgreSQL. The pure checks are in unit/capture/test_capture_checks.py, real processes in
e2e/test_capture_processes.py."""

from __future__ import annotations

import json

import pandas as pd

from helpers import (
    HEADER,
    assert_ledger_ok,
    bad_files,
    batches,
    ingest,
    personal_data_in,
    run_cli,
    table,
    write,
)


def test_a_column_marked_optional_may_be_absent(sqlite_url, tmp_path, capsys):
    mapping = write(
        tmp_path / "crm.yaml",
        "columns:\n  Email: email\n  Organisation: company\noptional: [Organisation]\n",
    )
    path = write(tmp_path / "crm.csv", "Email\na@x.com\n")
    code, _, err = run_cli(
        capsys, "ingest", str(path), "--source", "crm", "--mapping", str(mapping)
    )
    assert code == 0, err
    assert table(sqlite_url, "leads").company.isna().all()


def test_the_flow_itself_refuses_a_missing_mapped_column(sqlite_url, tmp_path):
    mapping = write(tmp_path / "crm.yaml", "columns:\n  Email: email\n  Organisation: company\n")
    path = write(tmp_path / "crm.csv", "Email,Org\na@x.com,Acme\n")
    state, _ = ingest(path, mapping=mapping)
    assert state.is_failed() and "'Organisation' -> 'Org'" in state.message
    assert batches(sqlite_url).empty


# --------------------------------------------------------------------------- 4. merges


def test_merging_an_identical_record_is_not_a_change(database_url, tmp_path):
    header = "email,first_name,plan,note\n"
    first = write(tmp_path / "a.csv", header + "a@x.com,Ann,pro,\nb@x.com,Bob,free,hi\n")
    _, data = ingest(first)
    assert data["inserted"] == 2
    # Same records, other order: other content, so it is merged, not skipped.
    again = write(tmp_path / "b.csv", header + "b@x.com,Bob,free,hi\na@x.com,Ann,pro,\n")
    _, data = ingest(again)
    assert (data["inserted"], data["merged"]) == (0, 2)
    merges = table(database_url, "lead_events").query("kind == 'merge'")
    assert [d["changed"] for d in merges.details] == [[], []]
    assert_ledger_ok(database_url)


def test_the_audit_catches_an_input_counted_by_two_batches(database_url, tmp_path):
    """What a rerun after a crash used to do: a second batch of the same content."""
    from sqlalchemy import insert, select, update

    from leadflow import audit, store
    from leadflow import tables as t

    path = write(tmp_path / "a.csv", HEADER + "a@x.com,A,,,,,,,,\nbad@@x,B,,,,,,,,\n")
    state, _ = ingest(path, max_quarantine_rate=0.9)
    assert state.is_completed()
    engine = store.get_engine(database_url)
    b = t.capture_batches
    with engine.begin() as conn:
        first = conn.execute(select(b)).mappings().one()
        copy = {k: v for k, v in first.items() if k != "id"} | {"status": "running"}
        second = conn.execute(insert(b).values(copy).returning(b.c.id)).scalar_one()
        conn.execute(update(b).where(b.c.id == second).values(received=1, quarantined=1))
        quarantined = conn.execute(select(t.quarantine)).mappings().one()
        row = {k: v for k, v in quarantined.items() if k != "id"}
        conn.execute(insert(t.quarantine).values(row | {"batch_id": second}))
        # ...and a record counted twice inside one running batch.
        conn.execute(insert(t.quarantine).values(row | {"batch_id": second}))
        conn.execute(update(b).where(b.c.id == second).values(received=2, quarantined=2))
    with engine.connect() as conn:
        report = audit.run_audit(conn)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "hold the same input" in text
    assert f"batch {second}: 1 record(s) counted more than once" in text


def test_no_email_or_phone_reaches_the_logs_or_the_terminal(sqlite_url, tmp_path, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO)
    codes = {}
    for path in bad_files(tmp_path):
        codes[path.name] = run_cli(capsys, "ingest", str(path), "--source", "t")
        code, out, err = codes[path.name]
        assert code in (1, 2), (path.name, code, err)
        assert personal_data_in(out + err) == [], (path.name, out + err)
        assert not any(ch in err for ch in "\x00\x07\x1b"), (path.name, err)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert personal_data_in(logged) == []
    # What the quarantine shows people is masked too, broken addresses included.
    for argv in (("quarantine", "list"), ("quarantine", "list", "--json")):
        code, out, _ = run_cli(capsys, *argv)
        assert code == 0 and "held" in out and personal_data_in(out) == [], out
    assert codes["headerless.csv"][0] == 2 and "looks like data" in codes["headerless.csv"][2]
    assert codes["latin.csv"][0] == 1 and "not valid utf-8" in codes["latin.csv"][2]


# --------------------------------------------------------------------------- 6. exit codes


def test_an_empty_file_and_a_header_only_file_are_the_same_empty_delivery(
    sqlite_url, tmp_path, capsys
):
    empty = write(tmp_path / "empty.csv", "")
    header_only = write(tmp_path / "header.csv", HEADER)
    # On the command line: bad input, one line, nothing written.
    for path in (empty, header_only):
        code, out, err = run_cli(capsys, "ingest", str(path), "--source", "t")
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert f"{path.name}: no records (the file is empty or has only a header)" in err
    assert batches(sqlite_url).empty
    # As a flow (a deployment): the gate rejects both the same way.
    verdicts = []
    for path in (empty, header_only):
        state, data = ingest(path)
        assert state.is_failed() and data["received"] == 0
        verdicts.append(data["rejected_chunks"])
    assert verdicts == [["1/1"], ["2/1"]]
    checks = table(sqlite_url, "dq_results").checks
    failed = [[c["name"] for c in row if not c["success"]] for row in checks]
    assert failed == [["batch_not_empty"], ["batch_not_empty"]]
    assert_ledger_ok(sqlite_url)


def test_user_errors_are_exit_2_in_one_line(sqlite_url, tmp_path, capsys):
    cases = [
        ("enrich", "--provider", str(tmp_path / "missing.csv").join(["file:", ""])),
        ("enrich", "--provider", "bogus"),
        ("run", "--provider", "bogus"),
        ("ingest", str(tmp_path / "nowhere.csv"), "--source", "t"),
        ("learn", "--out", str(tmp_path / "rules.yaml")),  # no leads with outcomes at all
    ]
    for argv in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, code, err)
        assert err.startswith("leadflow: ") and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err


# --------------------------------------------------------------------------- the quarantine


def test_quarantined_records_are_listed_masked_exported_and_released(
    database_url, tmp_path, capsys
):
    strict = write(
        tmp_path / "strict.yaml",
        "columns:\n  Email: email\n  Phone: phone\non_invalid:\n  phone: quarantine\n",
    )
    fixed = write(tmp_path / "fixed.yaml", "columns:\n  Email: email\n  Phone: phone\n")
    good = "".join(f"g{i}@x.com,+1 415 555 01{i:02d}\n" for i in range(8))
    bad = "new.person@x.com,call me\ng0@x.com,no phone\nbroken@@x.com,+1 415 555 0177\n"
    path = write(tmp_path / "crm.csv", "Email,Phone\n" + good + bad)
    ingest_args = ["ingest", str(path), "--source", "crm", "--mapping", str(strict)]
    code, _, err = run_cli(capsys, *ingest_args, "--max-quarantine-rate", "0.5")
    assert code == 0, err

    code, out, _ = run_cli(capsys, "quarantine", "list", "--batch", "1", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["held"] == 3
    assert listing["by_reason"] == {"fields_are_valid": 2, "email_is_valid": 1}
    shown = [r["record"] for r in listing["records"]]
    assert "new.person@x.com" not in out and shown[0] == "n…@x.com,call me"
    assert shown[2] == "b…@x.com,…77"  # the phone is masked too

    exported = tmp_path / "held.csv"
    code, _, _ = run_cli(capsys, "quarantine", "export", "--batch", "1", "--out", str(exported))
    assert exported.read_text().splitlines() == ["Email,Phone", *bad.splitlines()]

    # Without the mapping the batch was read with, a release would misread it: refused.
    code, _, err = run_cli(capsys, "quarantine", "release", "--batch", "1")
    assert code == 2 and "--mapping" in err
    code, out, err = run_cli(
        capsys,
        "quarantine",
        "release",
        "--batch",
        "1",
        "--mapping",
        str(fixed),
        "--json",
        "--max-quarantine-rate",
        "0.5",
    )
    assert code == 0, err
    released = json.loads(out)
    assert {k: released[k] for k in ("released", "inserted", "merged", "still_held")} == {
        "released": 2,
        "inserted": 1,
        "merged": 1,
        "still_held": 1,
    }
    batch = batches(database_url).iloc[0]
    assert (batch.received, batch.inserted, batch.merged, batch.quarantined) == (11, 9, 1, 1)
    leads = table(database_url, "leads").set_index("email")
    assert pd.isna(leads.loc["new.person@x.com", "phone"])  # blanked, kept in _invalid
    events = table(database_url, "lead_events")
    assert sorted(events.dropna(subset=["record_no"]).record_no.astype(int)) == list(range(2, 12))
    assert_ledger_ok(database_url)
    # Released records are gone from the list; a second release finds nothing to do.
    code, out, _ = run_cli(capsys, "quarantine", "list", "--json")
    assert json.loads(out)["held"] == 1
    code, out, _ = run_cli(
        capsys,
        "quarantine",
        "release",
        "--reason",
        "fields_are_valid",
        "--mapping",
        str(fixed),
        "--json",
    )
    assert json.loads(out)["selected"] == 0
    assert_ledger_ok(database_url)


def test_explain_finds_a_lead_by_email_or_external_id_and_shows_what_merges_changed(
    sqlite_url, tmp_path, capsys
):
    header = "email,external_id,company\n"
    run_cli(
        capsys,
        "ingest",
        str(write(tmp_path / "a.csv", header + "Ann@X.com,A-1,Old\n")),
        "--source",
        "crm",
    )
    run_cli(
        capsys,
        "ingest",
        str(write(tmp_path / "b.csv", header + "ann@x.com,A-1,New\n")),
        "--source",
        "crm",
    )
    for key in ("ANN@x.com", "A-1", "crm:A-1", "1"):
        code, out, err = run_cli(capsys, "explain", key)
        assert code == 0, (key, err)
        assert "merge: merged (changed: company)" in out, out
    code, _, err = run_cli(capsys, "explain", "nobody@x.com")
    # A miss names what it searched (masked: messages never print an address) and where.
    assert code == 2 and "no lead" in err and "@x.com" in err, err
    assert "nobody@x.com" not in err and "leadflow.db" in err, err
