"""Bad routing rules are refused naming the rep and the field."""

from __future__ import annotations

import pytest

from leadflow.routing.rules import parse_rules

from helpers import RULES


def test_bad_routing_rules_are_refused_naming_the_rep_and_field(tmp_path):
    from leadflow.config import ConfigError

    bad = RULES.replace("CAP", "null").replace("Europe/Berlin", "Europe/Atlantis")
    with pytest.raises(ConfigError, match=r"cem.*timezone"):
        parse_rules(bad, "routing.yaml")
