"""Rules checked first: the one line keeps the file once and every problem."""

from __future__ import annotations

import pytest

from tasks import rules_check


@pytest.mark.unit
def test_one_line_keeps_the_file_once_and_every_problem() -> None:
    message = (
        "rules/routing.yaml: 2 problem(s)\n"
        "  rules/routing.yaml: fallback: Field required (value: dict)\n"
        "  rules/routing.yaml: fallbak: Extra inputs are not permitted (value: dict)"
    )
    assert rules_check.one_line(message) == (
        "rules/routing.yaml: fallback: Field required (value: dict); "
        "fallbak: Extra inputs are not permitted (value: dict)"
    )
    assert rules_check.one_line("rules/x.yaml: file not found") == "rules/x.yaml: file not found"
