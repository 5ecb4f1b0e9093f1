"""A typo in rules/booking.yaml stops routing before a lead moves (routing makes the links),
in one line naming the file and the field; the shipped file loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from leadflow.booking import rules as booking_rules
from leadflow.config import ConfigError
from tasks import rules_check

pytestmark = pytest.mark.unit
RULES = Path(__file__).resolve().parents[3] / "rules"


def test_the_shipped_booking_rules_load() -> None:
    rules, version = booking_rules.load_rules(RULES / "booking.yaml")
    assert rules.enabled and rules.length.total_seconds() == 1800 and len(version) == 12


@pytest.mark.parametrize(
    ("line", "bad", "field"),
    [("days: 5", "dayz: 5", "dayz"), ("meeting: 30m", "meeting: 25m", "meeting")],
)
def test_a_typo_stops_routing_in_one_line(tmp_path, monkeypatch, line, bad, field) -> None:
    shutil.copytree(RULES, tmp_path / "rules")
    path = tmp_path / "rules" / "booking.yaml"
    path.write_text(path.read_text().replace(line, bad, 1))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        rules_check.routing()
    message = str(caught.value)
    assert "booking.yaml" in message and field in message and "\n" not in message
