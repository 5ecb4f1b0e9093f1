"""The capture flow end to end, on SQLite and PostgreSQL, under Prefect's test harness."""

import json
import zlib

import pandas as pd
import pytest
from sqlalchemy import func, select

from leadflow import store
from leadflow import tables as t

from helpers import assert_ledger_ok, ingest, table, write

HEADER = "email,first_name,last_name,company,title,phone,country,website,source,created_at\n"


def test_ingest_counts_normalises_and_writes_the_ledger(database_url, tmp_path):
    path = write(
        tmp_path / "leads.csv",
        HEADER
        + " John@Acme.COM ,JOHN,doe,Acme Inc,CEO,+1 415 555 0100,USA,https://www.acme.com/x,webinar,2024-01-05T10:00:00Z\n"
        + "mary@beta.io,Mary,Smith,Beta,VP Sales,020 7946 0018,UK,beta.io,,2024-03-01\n"
        + "not-an-email,A,B,C,D,,,,,\n",
    )
    state, data = ingest(path, source="web", max_quarantine_rate=0.5)
    assert state.is_completed()
    assert {k: data[k] for k in ("received", "inserted", "merged", "quarantined")} == {
        "received": 3,
        "inserted": 2,
        "merged": 0,
        "quarantined": 1,
    }
    leads = table(database_url, "leads")
    john = leads.iloc[0]
    assert (
        john.email,
        john.first_name,
        john.last_name,
        john.phone,
        john.country,
        john.website,
        john.source,
    ) == ("john@acme.com", "John", "Doe", "+14155550100", "US", "acme.com", "webinar")
    assert str(john.created_at) == "2024-01-05 10:00:00+00:00"
    assert leads.iloc[1].source == "web" and leads.iloc[1].phone == "+442079460018"
    assert set(leads.status) == {"captured"}
    quarantine = table(database_url, "quarantine")
    assert quarantine.iloc[0].reasons == ["email_is_valid"]
    assert quarantine.iloc[0].record == "not-an-email,A,B,C,D,,,,,"
    events = table(database_url, "lead_events")
    assert events.to_status.tolist() == ["captured", "captured"]
    assert events.batch_id.tolist() == [data["batch_id"]] * 2
    report = assert_ledger_ok(database_url)
    assert report["received"] == 3


def test_duplicates_merge_newest_non_empty_wins(database_url, tmp_path):
    first = write(
        tmp_path / "a.csv",
        HEADER
        + "ann@x.com,Ann,Lee,Old Co,Analyst,,US,,ads,2024-01-01T00:00:00Z\n"
        + " ANN@X.COM ,,,New Co,,+1 415 555 0100,,,,2024-02-01T00:00:00Z\n",
    )
    _, data = ingest(first)
    assert (data["inserted"], data["merged"]) == (1, 1)
    lead = table(database_url, "leads").iloc[0]
    # Newest non-empty per field; source keeps the first; created_at the earliest.
    assert (lead.company, lead.title, lead.phone, lead.source) == (
        "New Co",
        "Analyst",
        "+14155550100",
        "ads",
    )
    assert str(lead.created_at) == "2024-01-01 00:00:00+00:00"

    # An older record arriving later does not overwrite newer values.
    later = write(
        tmp_path / "b.csv", HEADER + "ann@x.com,,,Ancient Co,CFO,,,,,2023-06-01T00:00:00Z\n"
    )
    _, data = ingest(later)
    assert (data["inserted"], data["merged"]) == (0, 1)
    lead = table(database_url, "leads").iloc[0]
    assert lead.company == "New Co" and lead.title == "Analyst"
    assert str(lead.created_at) == "2023-06-01 00:00:00+00:00"
    merges = table(database_url, "lead_events").query("kind == 'merge'")
    assert len(merges) == 2
    assert merges.iloc[-1].details == {"changed": ["created_at"]}
    assert merges.record_no.tolist() == [3, 2]  # the line of each merged record
    assert_ledger_ok(database_url)


def test_reingesting_the_same_file_is_a_no_op(database_url, tmp_path):
    path = write(tmp_path / "leads.csv", HEADER + "a@x.com,A,,,,,,,,\nb@x.com,B,,,,,,,,\n")
    _, first = ingest(path)
    _, again = ingest(path)
    assert (again["received"], again["inserted"], again["duplicates"]) == (
        0,
        0,
        [again["batch_id"]],
    )
    batches = table(database_url, "capture_batches")
    assert batches.status.tolist() == ["complete", "duplicate"]
    assert "same content as batch" in batches.iloc[1].message
    with store.get_engine(database_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.leads)).scalar_one() == 2
    assert first["inserted"] == 2
    assert_ledger_ok(database_url)


def test_missing_required_column_fails_before_anything_is_written(database_url, tmp_path):
    write(tmp_path / "in" / "a.csv", "email,name\na@x.com,A\n")
    write(tmp_path / "in" / "b.csv", "name,phone\nB,123\n")
    state, _data = ingest(tmp_path / "in")
    assert state.is_failed()
    assert "b.csv: required column(s) 'email' missing; the header has: name, phone" in state.message
    assert table(database_url, "capture_batches").empty and table(database_url, "leads").empty


def test_bad_input_battery_no_crash_nothing_lost(database_url, tmp_path):
    big = "y" * (1 << 20)
    content = (
        "\ufeff"
        + HEADER.replace("\n", "\r\n")
        + 'ok1@x.com,Zoë,🚀 Rocket,"Acme, Inc",CEO,,DE,,,2024-01-01\r\n'
        + "robert@x.com,Robert'); DROP TABLE leads;--,O'Brien,SELECT * FROM users,,,,,,\r\n"
        + 'quoted@x.com,"Multi\r\nLine",Name,,,,,,,\r\n'
        + "short,row\r\n"
        + f'big@x.com,Big,Field,"{big}",,,,,,\r\n'
    ).encode("utf-8")
    content += "latin@x.com,Jos\xe9,,,,,,,,\r\n".encode("latin-1")
    content += b"nul@x.com,N\x00ul,,,,,,,,\r\n"
    content += b"wrongtype@x.com,A,B,C,D,not a phone,Narnia,,,yesterday\r\n"
    content += b",,No,Identity,,,,,,\r\n"
    path = write(tmp_path / "nasty.csv", content)
    state, data = ingest(path, max_quarantine_rate=0.9)
    assert state.is_completed(), state.message
    assert data["received"] == 9
    assert data["received"] == data["inserted"] + data["merged"] + data["quarantined"]
    leads = table(database_url, "leads").set_index("email")
    assert (
        leads.loc["ok1@x.com", "first_name"] == "Zoë"
        and leads.loc["ok1@x.com", "last_name"] == "🚀 Rocket"
    )
    assert leads.loc["ok1@x.com", "company"] == "Acme, Inc"
    assert leads.loc["robert@x.com", "first_name"] == "Robert'); Drop Table Leads;--" or leads.loc[
        "robert@x.com", "first_name"
    ].startswith("Robert'); DROP")
    assert leads.loc["robert@x.com", "company"] == "SELECT * FROM users"
    assert leads.loc["quoted@x.com", "first_name"] == "Multi Line"
    # The 1 MB company is not a company: blanked, the lead kept, the record kept as received.
    assert pd.isna(leads.loc["big@x.com", "company"])
    assert leads.loc["big@x.com", "attributes"]["_invalid"]["company"] == "<1048576 characters>"
    wrong = leads.loc["wrongtype@x.com"]
    assert pd.isna(wrong.phone) and pd.isna(wrong.country) and pd.isna(wrong.created_at)
    assert wrong.attributes["_invalid"] == {
        "phone": "not a phone",
        "country": "Narnia",
        "created_at": "yesterday",
    }
    quarantine = table(database_url, "quarantine").set_index("record_no")
    reasons = {no: r for no, r in quarantine.reasons.items()}
    assert reasons[6] == ["record_is_well_formed: 2 fields where the header has 10"]
    assert reasons[8] == ["record_is_well_formed: bytes that are not valid utf-8"]
    assert reasons[9] == ["record_is_well_formed: NUL byte in the record"]
    assert reasons[11] == ["identity_present"]
    assert quarantine.loc[8, "record"] == "latin@x.com,Jos\\xe9,,,,,,,,"
    # The records are kept exactly as received, byte for byte (after the header line).
    raw = table(database_url, "raw_captures")
    assert raw.records.sum() == 9 and (raw.first_record_no.min(), raw.last_record_no.max()) == (
        2,
        11,
    )
    kept = b"".join(zlib.decompress(c) for c in raw.content)
    assert kept == content.split(b"\r\n", 1)[1]
    assert_ledger_ok(database_url)


def test_empty_file_fails_the_gate_and_accounts_for_nothing(database_url, tmp_path):
    path = write(tmp_path / "empty.csv", HEADER)
    state, data = ingest(path)
    assert state.is_failed() and "rejected" in state.message
    assert data["received"] == 0 and data["rejected_chunks"] == [f"{data['batch_id']}/1"]
    results = table(database_url, "dq_results")
    failed = [c["name"] for c in results.iloc[0].checks if not c["success"]]
    assert failed == ["batch_not_empty"]
    assert_ledger_ok(database_url)


def test_quarantine_rate_above_limit_rejects_the_chunk(database_url, tmp_path):
    rows = "".join(f"u{i}@x.com,U,,,,,,,,\n" for i in range(8)) + "bad1,,,,,,,,,\nbad2,,,,,,,,,\n"
    path = write(tmp_path / "leads.csv", HEADER + rows)
    state, data = ingest(path)  # default limit 5%: 20% here
    assert state.is_failed()
    assert (data["received"], data["inserted"], data["quarantined"]) == (10, 0, 10)
    assert table(database_url, "leads").empty
    quarantine = table(database_url, "quarantine")
    assert len(quarantine) == 10
    assert quarantine.reasons.iloc[-1] == [
        "email_is_valid",
        "chunk_rejected: quarantine_rate_within_limit",
    ]
    assert quarantine.reasons.iloc[0] == ["chunk_rejected: quarantine_rate_within_limit"]
    assert table(database_url, "capture_batches").status.tolist() == ["failed"]
    assert_ledger_ok(database_url)
    # After fixing the limit the same file can be ingested (a rejected batch is not a no-op).
    state, data = ingest(path, max_quarantine_rate=0.5)
    assert state.is_completed() and data["inserted"] == 8


def test_mapping_external_ids_null_markers_values_outcome_attributes(database_url, tmp_path):
    mapping = write(
        tmp_path / "crm.yaml",
        """
source: crm
columns:
  Prospect ID: external_id_col_is_not_a_field
""",
    )
    from leadflow.capture.rules import load_mapping
    from leadflow.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"crm.yaml: columns: .*unknown field 'external_id_col_is_not_a_field'"
    ):
        load_mapping(mapping)
    mapping = write(
        tmp_path / "crm.yaml",
        """
source: crm
external_id: Prospect ID
columns:
  Full Name: name
  Lead Source: source
  Country: country
ignore: [Lead Number]
null_markers: ["Select", "N/A", "-", ""]
values:
  source: {Olark Chat: chat, Google: paid_search}
outcome:
  column: Converted
  won: ["1"]
  lost: ["0"]
""",
    )
    path = write(
        tmp_path / "crm.csv",
        "Prospect ID,Lead Number,Full Name,Lead Source,Country,Converted,TotalVisits,Specialization\n"
        "p-1,660737,Ada Lovelace,Olark Chat,Select,0,5,Select\n"
        "p-2,660728,Alan Turing,Google,india,1,2.0,Finance Management\n"
        "p-1,660737,Ada Lovelace,N/A,GB,1,7,Business Administration\n"
        ",660999,No Id,Google,US,0,1,-\n",
    )
    state, data = ingest(path, source="crm", mapping=mapping, max_quarantine_rate=0.5)
    assert state.is_completed(), state.message
    assert (data["inserted"], data["merged"], data["quarantined"]) == (2, 1, 1)
    leads = table(database_url, "leads").set_index("external_id")
    ada = leads.loc["crm:p-1"]
    assert (ada.first_name, ada.last_name, ada.source, ada.country, ada.outcome) == (
        "Ada",
        "Lovelace",
        "chat",
        "GB",
        "won",
    )
    assert pd.isna(ada.email)
    assert ada.attributes == {"TotalVisits": "7", "Specialization": "Business Administration"}
    alan = leads.loc["crm:p-2"]
    assert (alan.source, alan.country, alan.outcome) == ("paid_search", "IN", "won")
    assert "Lead Number" not in alan.attributes
    assert_ledger_ok(database_url)


def test_jsonl_wrong_types_and_folder_of_files(database_url, tmp_path):
    write(
        tmp_path / "in" / "a.jsonl",
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "email": "j1@x.com",
                    "first_name": "J",
                    "phone": 4155550100,
                    "country": "US",
                    "score_hint": 7,
                },
                {"email": 12345, "first_name": "Num"},
                {"email": "j3@x.com", "first_name": {"nested": 1}, "created_at": 1704448800},
            ]
        )
        + "\nnot json at all\n",
    )
    write(tmp_path / "in" / "b.csv", "email,first_name\nj1@x.com,Jay\n")
    state, data = ingest(tmp_path / "in", max_quarantine_rate=0.9)
    assert state.is_completed(), state.message
    assert (data["received"], data["inserted"], data["merged"], data["quarantined"]) == (5, 2, 1, 2)
    leads = table(database_url, "leads").set_index("email")
    j1 = leads.loc["j1@x.com"]
    assert (
        j1.phone == "+14155550100" and j1.first_name == "Jay" and j1.attributes == {"score_hint": 7}
    )
    j3 = leads.loc["j3@x.com"]
    assert pd.isna(j3.first_name) and j3.attributes["_invalid"] == {"first_name": '{"nested": 1}'}
    assert str(j3.created_at) == "2024-01-05 10:00:00+00:00"
    reasons = sorted(map(tuple, table(database_url, "quarantine").reasons))
    assert reasons == [
        ("email_is_valid",),
        ("record_is_well_formed: invalid JSON: Expecting value at column 1",),
    ]
    assert len(table(database_url, "capture_batches")) == 2
    assert_ledger_ok(database_url)


def test_fsspec_url_input(database_url, tmp_path):
    import fsspec

    with fsspec.open("memory://drop/leads.csv", "w") as handle:
        handle.write("email\nm1@x.com\nm2@x.com\n")
    state, data = ingest("memory://drop/leads.csv")
    assert state.is_completed() and data["inserted"] == 2
    assert table(database_url, "capture_batches").uri.tolist() == ["memory://drop/leads.csv"]


def test_gate_results_are_stored_published_and_redacted(database_url, tmp_path):
    path = write(
        tmp_path / "leads.csv",
        HEADER + "secret.person@x.com,A,,,,,,,,\nbroken.person@@x.com,B,,,,,,,,\n",
    )
    ingest(path, max_quarantine_rate=0.9)
    results = table(database_url, "dq_results")
    row = results.iloc[0]
    assert (
        row.hop == "captured"
        and row.success
        and (row.evaluated, row.passed, row.quarantined) == (2, 1, 1)
    )
    from leadflow.settings import get_settings

    docs = get_settings().data_docs_dir
    assert (docs / "index.html").exists()
    pages = list((docs / "validations").rglob("*.html"))
    assert pages
    text = "".join(p.read_text(errors="ignore") for p in pages)
    assert (
        "values must match this regular expression" in text and "1 unexpected values found" in text
    )
    assert "broken.person@@x.com" not in text and "secret.person@x.com" not in text


def test_chunks_prepared_in_a_worker_process_match_in_process(database_url, tmp_path, monkeypatch):
    import flows.capture as capture_flow

    rows = "".join(f"u{i % 7}@x.com,U{i},,,,,,,,2024-01-{1 + i:02d}T00:00:00Z\n" for i in range(20))
    path = write(tmp_path / "leads.csv", HEADER + rows + "broken,,,,,,,,,\n")
    monkeypatch.setattr(capture_flow, "PARALLEL_FROM_BYTES", 0)
    monkeypatch.setenv("LEADFLOW_PREPARE_WORKERS", "1")
    state, data = ingest(path, chunk_size=6, max_quarantine_rate=0.5)
    assert state.is_completed(), state.message
    # Duplicates within and across chunks merge into 7 leads; newest first name wins.
    assert (data["received"], data["inserted"], data["merged"], data["quarantined"]) == (
        21,
        7,
        13,
        1,
    )
    leads = table(database_url, "leads").set_index("email")
    assert leads.loc["u0@x.com", "first_name"] == "U14"
    assert len(table(database_url, "capture_chunks")) == 4
    assert_ledger_ok(database_url)
