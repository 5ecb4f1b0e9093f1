"""`leadflow setup --help` names every variable it reads (issue 21), and where a drop
folder's relative path lands."""

from __future__ import annotations

from pathlib import Path

from leadflow.capture.run import drop_folder_path


def test_setup_help_lists_every_block_and_its_variable(capsys):
    import pytest

    from app import cli
    from blocks import registry

    with pytest.raises(SystemExit) as exited:
        cli.main(["setup", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name, (variable, _) in registry.PLANS.items():
        line = next((x for x in out.splitlines() if x.split()[:1] == [name]), "")
        assert variable in line, f"`leadflow setup --help` does not list block {name!r}"
    for variable in ("LEADFLOW_HOME", "LEADFLOW_DATABASE_URL", "PREFECT_API_URL"):
        assert variable in out
    assert "var/inbox/activities" in out


def test_a_relative_drop_folder_is_under_the_data_folder(tmp_path):
    assert drop_folder_path("var/inbox/leads", tmp_path) == str(tmp_path / "var/inbox/leads")
    assert drop_folder_path("/srv/in", tmp_path) == "/srv/in"
    assert drop_folder_path("s3://bucket/in", tmp_path) == "s3://bucket/in"
    assert Path(drop_folder_path("in", tmp_path)).is_absolute()
