"""Capture you can trust (issue 8): typos, identical merges, phones, exit codes, personal
data in messages, crashes and concurrent ingests. Real SQLite/PostgreSQL, real processes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from leadflow import cli
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
