"""Capture you can trust (issue 8): typos, identical merges, phones, exit codes, personal
data in messages, crashes and concurrent ingests. Real SQLite/PostgreSQL, real processes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from app import cli
from tasks import phones
from tasks.capture.mapping import prepare_records
from tasks.sources import read_chunks

from conftest import write
from helpers import assert_ledger_ok, ingest, table

HEADER = "email,first_name,last_name,company,title,phone,country,website,source,created_at\n"


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def batches(url: str) -> pd.DataFrame:
    return table(url, "capture_batches")


# --------------------------------------------------------------------------- 1. typos


def test_a_mapped_column_missing_from_the_file_is_exit_2_naming_it_and_the_closest(
    sqlite_url, tmp_path, capsys
):
    mapping = write(
        tmp_path / "crm.yaml",
        "columns:\n  E-Mail Adress: email\n  Organisation: company\n  Full Name: name\n",
    )
    path = write(
        tmp_path / "crm.csv", "Email Address,Organization,Full Name\na@x.com,Acme,Ann Lee\n"
    )
    code, out, err = run_cli(
        capsys, "ingest", str(path), "--source", "crm", "--mapping", str(mapping)
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1, err  # one clear line, no traceback
    assert "'E-Mail Adress' -> 'Email Address'" in err
    assert "'Organisation' -> 'Organization'" in err
    assert batches(sqlite_url).empty  # nothing was written


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


def test_an_optional_column_the_mapping_does_not_name_is_a_config_error(tmp_path, capsys):
    mapping = write(tmp_path / "crm.yaml", "columns:\n  Email: email\noptional: [Emial]\n")
    path = write(tmp_path / "crm.csv", "Email\na@x.com\n")
    code, _, err = run_cli(
        capsys, "ingest", str(path), "--source", "crm", "--mapping", str(mapping)
    )
    assert code == 2 and "optional" in err and "Emial" in err


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


# --------------------------------------------------------------------------- 7. phones


@pytest.mark.unit
def test_a_local_only_number_has_no_e164_form():
    assert phones.e164("555-0199", "US") is None
    assert phones.e164("+1 555 0199", None) is None
    assert phones.e164("(415) 555-0199", "US") == "+14155550199"
    assert phones.to_e164(pd.Series(["555-0199"]), pd.Series(["US"])).tolist() == [None]


@pytest.mark.unit
def test_an_invalid_phone_is_blanked_and_kept_as_json_in_attributes(tmp_path):
    from datetime import UTC, datetime

    from leadflow.mapping import SourceMapping

    path = write(
        tmp_path / "a.jsonl",
        '{"email": "a@x.com", "phone": "555-0199", "country": "US", "website": {"url": "x"}}\n',
    )
    mapping = SourceMapping(on_invalid={"phone": "blank", "website": "blank"})
    chunk = next(
        read_chunks(str(path), file_format="jsonl", encoding="utf-8", delimiter=",", chunk_size=10)
    )
    rows = prepare_records(chunk, mapping, source="t", now=datetime.now(UTC))
    assert rows.phone.isna().all()
    attributes = json.loads(rows.attributes.iloc[0])
    assert attributes["_invalid"]["phone"] == "555-0199"
    # A wrong-typed value is noted as JSON text, not as a Python repr.
    assert json.loads(attributes["_invalid"]["website"]) == {"url": "x"}


# --------------------------------------------------------------------------- 2, 3. processes

NOW = "2025-03-01T12:00:00Z"


def lead_file(path, records: int):
    """A file whose records merge across chunks and some of which are quarantined."""
    rows = []
    for i in range(records):
        email = f"bad{i}@@x" if i % 53 == 7 else f"p{i % (records * 3 // 4)}@firm{i % 90}.com"
        rows.append(f"{email},F{i},L{i},Firm {i % 90},,,US,,web,2024-01-{1 + i % 28:02d}\n")
    return write(path, HEADER + "".join(rows))


def cli_process(database_url: str, path, *extra: str, batch_size: int = 100):
    import os
    import subprocess
    import sys

    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "LEADFLOW_DATABASE_URL": database_url,
        "LEADFLOW_BATCH_SIZE": str(batch_size),
        "PREFECT_API_URL": str(get_current_settings().api.url),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    command = [sys.executable, "-m", "app.cli", "ingest", str(path), "--source", "web"]
    return subprocess.Popen(
        [*command, "--now", NOW, "--max-quarantine-rate", "0.5", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def snapshot(url: str) -> dict[str, list]:
    """What a capture leaves behind, without ids and wall-clock times."""

    def rows(name: str, columns: list[str], order: list[str]) -> list:
        frame = table(url, name)[columns].sort_values(order).astype(str)
        return frame.to_numpy().tolist()

    lead_columns = ["email", "first_name", "last_name", "company", "country", "source"]
    return {
        "leads": rows("leads", [*lead_columns, "created_at", "attributes", "status"], ["email"]),
        "events": rows("lead_events", ["kind", "record_no", "to_status", "details"], ["record_no"]),
        "quarantine": rows("quarantine", ["record_no", "record", "reasons"], ["record_no"]),
        "batches": rows(
            "capture_batches",
            ["status", "received", "inserted", "merged", "quarantined"],
            ["status"],
        ),
        "chunks": rows(
            "capture_chunks",
            ["chunk_no", "status", "received", "inserted", "merged", "quarantined"],
            ["chunk_no"],
        ),
        "raw": rows("raw_captures", ["chunk_no", "records", "content_hash"], ["chunk_no"]),
    }


def clean_run(tmp_path, path) -> dict[str, list]:
    from datetime import datetime

    from leadflow import store

    url = f"sqlite:///{tmp_path / 'clean.db'}"
    store.upgrade(url)
    state, _ = ingest(
        path,
        source="web",
        now=datetime.fromisoformat(NOW),
        database_url=url,
        chunk_size=100,
        max_quarantine_rate=0.5,
    )
    assert state.is_completed(), state.message
    return snapshot(url)


def committed_chunks(url: str) -> int:
    from sqlalchemy import func, select

    from leadflow import store
    from leadflow import tables as t

    with store.get_engine(url).connect() as conn:
        return conn.execute(select(func.count()).select_from(t.capture_chunks)).scalar_one()


@pytest.mark.flow
def test_an_ingest_killed_mid_file_resumes_and_ends_as_a_clean_run(sqlite_url, tmp_path):
    # SQLite only, to keep the test short: resuming is the same SQL on both databases, and
    # the lock that tells a dead batch from a live one is tested on both below.
    database_url = sqlite_url
    import random
    import signal
    import time

    path = lead_file(tmp_path / "leads.csv", 2000)  # 20 chunks of 100
    expected = clean_run(tmp_path, path)
    rng = random.Random()
    kills = []
    for _ in range(2):
        already = committed_chunks(database_url)
        target = already + rng.randint(1, 6)
        process = cli_process(database_url, path)
        deadline = time.monotonic() + 60
        while committed_chunks(database_url) < target and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append(committed_chunks(database_url))
    assert kills[-1] < 20, f"the runs finished before they were killed: {kills}"
    assert table(database_url, "capture_batches").status.tolist() == ["running"]
    from leadflow import audit, store

    with store.get_engine(database_url).connect() as conn:
        problems = audit.run_audit(conn).problems
    assert any("still 'running' but its run has died" in p for p in problems), problems

    process = cli_process(database_url, path, "--json")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    summary = json.loads(out)
    assert summary["resumed"] == [1] and summary["received"] == 2000 - 100 * kills[-1]
    assert snapshot(database_url) == expected, f"killed after chunks {kills}"
    assert_ledger_ok(database_url)


@pytest.mark.flow
def test_two_ingests_of_the_same_file_at_once_store_it_once(database_url, tmp_path):
    path = lead_file(tmp_path / "leads.csv", 1000)
    expected = clean_run(tmp_path, path)
    first, second = cli_process(database_url, path), cli_process(database_url, path)
    for process in (first, second):
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    found = snapshot(database_url)
    assert sorted(found["batches"]) == sorted(
        [*expected["batches"], ["duplicate", "0", "0", "0", "0"]]
    )
    assert {k: v for k, v in found.items() if k != "batches"} == {
        k: v for k, v in expected.items() if k != "batches"
    }
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


# --------------------------------------------------------------------------- 5. personal data

EMAILS = ["ann.secret@example.com", "bob.hidden@example.org", "carol.private@example.net"]
PHONES = ["+1 415 555 0123", "+44 20 7946 0958", "+49 30 901820"]


def bad_files(tmp_path) -> list:
    """Files that go wrong in different ways, all of them full of personal data."""
    rows = "".join(
        f"{email},Name {i},{phone}\n"
        for i, (email, phone) in enumerate(zip(EMAILS, PHONES, strict=True))
    )
    garbage = bytes(range(256)) + "\n".join(EMAILS + PHONES).encode() + b"\x00\x1b[31m\x07"
    return [
        write(tmp_path / "headerless.csv", rows),
        write(tmp_path / "garbage.csv", garbage),
        write(tmp_path / "semicolons.csv", "email;name;phone\n" + rows.replace(",", ";")),
        write(tmp_path / "bad_rows.csv", "email,name,phone\n" + rows.replace("@", "@@")),
        write(
            tmp_path / "latin.csv", ("email,name,phone\n" + rows).encode() + b"x@y.com,Jos\xe9,1\n"
        ),
        write(
            tmp_path / "json.jsonl",
            "\n".join(
                f'{{"mail": "{e}", "tel": "{p}"}}' for e, p in zip(EMAILS, PHONES, strict=True)
            ),
        ),
    ]


def personal_data_in(text: str) -> list[str]:
    digits = "".join(ch for ch in text if ch.isdigit())
    found = [e for e in EMAILS if e in text or e.split("@")[0] in text]
    found += [p for p in PHONES if p in text or "".join(c for c in p if c.isdigit()) in digits]
    return found


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


def test_a_headerless_file_in_a_real_process_prints_no_personal_data(sqlite_url, tmp_path):
    path = bad_files(tmp_path)[0]
    process = cli_process(sqlite_url, path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert personal_data_in(out + err) == [] and len(err.strip().splitlines()) == 1, err


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


def test_output_into_a_closed_pipe_is_not_an_error(sqlite_url):
    import os
    import subprocess
    import sys

    env = {**os.environ, "LEADFLOW_DATABASE_URL": sqlite_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "audit"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # like `| head` that has read what it wanted
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "BrokenPipeError" not in err and process.returncode == 0, err


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
    assert code == 2 and "nobody@x.com" in err
