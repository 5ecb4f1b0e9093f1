"""Capture you can trust (issue 8), the pure part: phones without an E.164 form, invalid
phones blanked and kept, an optional column the mapping does not name."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from leadflow.capture import phones
from leadflow.capture.mapping import prepare_records
from leadflow.capture.sources import read_chunks

from helpers import run_cli, write


def test_an_optional_column_the_mapping_does_not_name_is_a_config_error(tmp_path, capsys):
    mapping = write(tmp_path / "crm.yaml", "columns:\n  Email: email\noptional: [Emial]\n")
    path = write(tmp_path / "crm.csv", "Email\na@x.com\n")
    code, _, err = run_cli(
        capsys, "ingest", str(path), "--source", "crm", "--mapping", str(mapping)
    )
    assert code == 2 and "optional" in err and "Emial" in err


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

    from leadflow.capture.rules import SourceMapping

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
