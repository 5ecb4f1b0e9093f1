"""What the commands print on an empty database, as a person and as ``jq`` read it: no
``None`` or ``nan`` in the text, strict JSON (no NaN) on ``--json``."""

from __future__ import annotations

import json
import re

import pytest

from helpers import run_cli

COMMANDS = [
    ("report",),
    ("sla",),
    ("route",),
    ("outbox", "list"),
    ("quarantine", "list"),
]
UNSHOWABLE = re.compile(r"\b(None|nan|NaN|NaT|inf)\b")


def _strict(text: str) -> dict:
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_empty_database_reads_cleanly_as_text_and_as_strict_json(database_url, capsys):
    for argv in COMMANDS:
        code, out, err = run_cli(capsys, *argv)
        assert code == 0, (argv, err)
        assert out.strip(), argv
        assert not UNSHOWABLE.search(out), (argv, UNSHOWABLE.search(out), out)
        code, out, err = run_cli(capsys, *argv, "--json")
        assert code == 0, (argv, err)
        _strict(out)
    code, out, _ = run_cli(capsys, "report")
    assert "median n/a" in out and "velocity n/a" in out
