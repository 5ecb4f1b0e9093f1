"""The systemd units in deploy/: well-formed, and every command they start is one that
exists and parses (a unit that starts a mistyped command fails only on the host)."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
import yaml

from app.cli import build_parser

from helpers import ROOT

UNITS = sorted((ROOT / "deploy").glob("*.service"))


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(path.read_text())
    return unit


def test_there_is_a_unit_for_each_long_running_process() -> None:
    assert {p.name for p in UNITS} == {
        "prefect-server.service",
        "leadflow-worker.service",
        "leadflow-lane.service",
        "leadflow-serve.service",
    }


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_is_well_formed_and_its_command_parses(path: Path) -> None:
    unit = read_unit(path)
    assert {"Unit", "Service", "Install"} <= set(unit.sections()), path.name
    assert unit["Service"]["EnvironmentFile"] == "/etc/leadflow/leadflow.env"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    program, *argv = shlex.split(unit["Service"]["ExecStart"])
    name = Path(program).name
    assert name in {"leadflow", "prefect"}, program
    if name == "leadflow":
        parsed = build_parser().parse_args(argv)  # exits (SystemExit) on a typo
        assert parsed.command == argv[0]
    else:
        pools = {d["work_pool"]["name"] for d in _deployments()}
        if argv[:2] == ["worker", "start"]:
            assert argv[argv.index("--pool") + 1] in pools
        else:
            assert argv[:2] == ["server", "start"], argv


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_the_environment_file_holds_no_credentials_and_is_documented() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    for line in (ROOT / "deploy" / "leadflow.env").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        assert not any(word in key for word in ("PASSWORD", "TOKEN", "SECRET", "DATABASE_URL"))
        assert "@" not in value, line  # no user:password@host URLs either
        assert f"`{key}`" in documented, f"{key} is not in docs/configuration.md"


def test_every_variable_the_code_reads_is_in_the_configuration_reference() -> None:
    """docs/configuration.md is the one reference of every LEADFLOW_* variable: one the code
    reads and the reference does not name is a setting nobody can find."""
    import re

    documented = (ROOT / "docs" / "configuration.md").read_text()
    read = set()
    for folder in ("leadflow", "tasks", "flows", "app", "blocks"):
        for path in (ROOT / folder).rglob("*.py"):
            read |= set(re.findall(r"\bLEADFLOW_[A-Z_]*[A-Z]\b", path.read_text()))
    missing = sorted(v for v in read if f"`{v}`" not in documented)
    assert missing == [], f"not in docs/configuration.md: {missing}"
