"""The quarantine as a person works it, on SQLite and PostgreSQL: held records show no
email or phone (valid or not), a malformed post is held under its own reason only, the
batch list a gate suggests selects those batches, an unknown hop is one line, exit 2; and
the docs' curl example posts a lead that ends routed."""

from __future__ import annotations

import itertools
import json
import re
import shlex

from sqlalchemy import select

from leadflow import tables as t
from leadflow.capture.posted import capture_records
from leadflow.capture.rules import load_mapping
from tasks.lane import run_lane

from helpers import AUTH, MAPPING, ROOT, app_for, run_cli

RAW = ["ann@@acme", "ann.acme.com@", "ann.acme.com", "+1 (415) 555-0100"]


def _post(url: str, records: list) -> list:
    mapping, version = load_mapping(MAPPING)
    return capture_records(url, records, mapping, version, source="web")


def test_held_records_are_masked_and_counted_once_per_reason(database_url, capsys):
    first = _post(
        database_url,
        [
            {"email": RAW[0], "phone": RAW[3], "first_name": "Ann"},
            {"email": RAW[1], "mobile": RAW[3]},
        ],
    )
    second = _post(database_url, [{"email": RAW[2], "phone": RAW[3]}])
    broken = _post(database_url, ['{"email": "bo@acme.com", "phone": "+1 (415) 555-0100"'])
    assert all(p.status == "quarantined" for p in first + second + broken)
    batches = f"{first[0].batch_id},{second[0].batch_id}"

    code, out, err = run_cli(capsys, "quarantine", "list", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert listed["held"] == 4
    # The malformed post is held once, under its own reason (not also "chunk_rejected").
    assert listed["by_reason"].get("record_is_well_formed") == 1
    assert "chunk_rejected" not in listed["by_reason"]
    assert sum(listed["by_reason"].values()) == sum(len(r["reasons"]) for r in listed["records"])
    code, text, _ = run_cli(capsys, "quarantine", "list")
    assert code == 0
    for shown in (out, text):
        for raw in [*RAW, "bo@acme.com"]:
            assert raw not in shown, raw
        assert not re.search(r"415\D{0,3}555", shown)

    # What a gate's message suggests: both batches, and only those.
    code, out, err = run_cli(capsys, "quarantine", "list", "--batch", batches, "--json")
    assert code == 0, err
    assert {r["batch_id"] for r in json.loads(out)["records"]} == {
        first[0].batch_id,
        second[0].batch_id,
    }
    code, out, err = run_cli(capsys, "quarantine", "list", "--hop", "nosuch")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "nosuch" in err and "capture" in err and "route" in err


def _curl_fields() -> list[dict[str, str]]:
    """The fields of every ``curl ... /leads`` example in README.md and docs/."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text().replace("\\\n", " ").splitlines():  # continued lines
            if line.lstrip().startswith("curl") and "/leads" in line:
                pairs = itertools.pairwise(shlex.split(line))
                found.append(dict(w.split("=", 1) for a, w in pairs if a in ("-d", "--data")))
    return found


def test_the_documented_curl_example_posts_a_lead_that_is_routed(database_url, engine):
    examples = _curl_fields()
    assert examples, "no curl example posting to /leads in README.md or docs/"
    client = app_for(database_url)
    for fields in examples:
        answer = client.post("/leads", data=fields, headers=AUTH)
        assert answer.status_code == 202, answer.text
        lead = answer.json()["lead_id"]
        run_lane([lead], database_url)
        with engine.connect() as conn:
            status = conn.execute(select(t.leads.c.status).where(t.leads.c.id == lead)).scalar()
        assert status == "routed", f"curl example {fields} ends {status}, not with a rep"
