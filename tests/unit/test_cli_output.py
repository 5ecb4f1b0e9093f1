"""What the command line shows a person, without running anything: every command's
``--help`` lists the environment it reads, ``--json`` is strict JSON, a command a message
suggests parses, and a held record shows no email or phone, valid or not."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from app.cli import build_parser
from app.cli.common import dumps
from leadflow.quarantine import mask, mask_record, masked

# Commands that open no database (they write files, or talk to the Prefect API only).
NO_DATABASE = {"generate", "blocks", "automations"}


def _subcommands() -> dict:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


def test_every_commands_help_lists_the_environment_it_reads():
    commands = _subcommands()
    assert len(commands) > 20
    for name, command in commands.items():
        text = command.format_help()
        assert "environment:" in text, f"leadflow {name} --help names no variables"
        if name not in NO_DATABASE:
            assert "LEADFLOW_DATABASE_URL" in text, name
            assert "LEADFLOW_DATABASE_BLOCK" in text, name


def test_blocks_help_names_every_variable_and_the_block_it_makes():
    from blocks import registry

    text = _subcommands()["blocks"].format_help()
    for name, (variable, _) in registry.PLANS.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(variable))
        assert name in line, f"{variable}'s line does not name block {name}"
    for variable in ("LEADFLOW_SMTP_PORT", "LEADFLOW_SMTP_STARTTLS", "LEADFLOW_SMTP_SSL"):
        assert f"  {variable} " in text


def _strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_whatever_the_figures_hold():
    data = {
        "median_minutes": float("nan"),
        "p90": np.float64("inf"),
        "count": np.int64(3),
        "share": np.float32(0.5),
        "missing": pd.NA,
        "when": pd.NaT,
        "at": datetime(2026, 1, 2, tzinfo=UTC),
        "rows": [{"x": -math.inf, "ok": np.bool_(True)}],
        "array": np.array([1.0, np.nan]),
    }
    parsed = _strict(dumps(data))
    assert parsed["median_minutes"] is None and parsed["p90"] is None
    assert parsed["count"] == 3 and parsed["share"] == 0.5
    assert parsed["missing"] is None and parsed["when"] is None
    assert parsed["rows"] == [{"x": None, "ok": True}]
    assert parsed["array"] == [1.0, None]
    assert parsed["at"].startswith("2026-01-02")
    with pytest.raises(ValueError):
        _strict('{"a": NaN}')  # the parser the tests use refuses what jq refuses


@pytest.mark.parametrize("suggested", ["23,24", "23"])
def test_the_quarantine_command_a_gate_suggests_parses(suggested):
    args = build_parser().parse_args(["quarantine", "list", "--batch", suggested])
    assert args.batch == tuple(int(b) for b in suggested.split(","))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["quarantine", "list", "--batch", "23,x"])


RAW = ["ann@@acme", "ann.acme.com@", "ann.acme.com", "+1 (415) 555-0100", "ann at acme.com"]


def test_held_records_show_no_email_or_phone_valid_or_not():
    record = json.dumps(
        {"email": RAW[0], "work_email": RAW[1], "e-mail": RAW[2], "phone": RAW[3], "note": RAW[4]}
    )
    csv_line = f'{RAW[2]},Acme,"{RAW[3]}",2024-01-31'
    shown = [
        mask_record(record),
        mask_record(csv_line, ["email", "company", "phone", "created_at"]),
        mask(f"{RAW[0]} {RAW[1]} {RAW[3]} {RAW[4]}"),
    ]
    for text in shown:
        for raw in RAW:
            assert raw not in text, (raw, text)
        assert "4155550100" not in text.replace(" ", "") and "555-0100" not in text
    assert "2024-01-31" in shown[1]  # a date is not a phone number
    assert json.loads(shown[0])["phone"] == "…00"


def test_masked_hides_each_address_in_running_text_and_changes_nothing_else():
    cases = {
        "SMTP 550 <bob@x.com>: no such user": "SMTP 550 <b…@x.com>: no such user",
        # a URL's own user@host, and an address in its path after it
        "https://svc:pw@dav.example.com/ann@acme.com/": "https://svc:p…@dav.example.com/a…@acme.com/",
        "http://127.0.0.1:5232/leadflow/ann-lee/": "http://127.0.0.1:5232/leadflow/ann-lee/",
        "@handle, price @ 5": "@handle, price @ 5",
        "to ann@acme.com and bo@b.io": "to a…@acme.com and b…@b.io",
    }
    for text, shown in cases.items():
        assert masked(text) == shown, text
    assert masked(ValueError("no ann@acme.com")) == "no a…@acme.com"
