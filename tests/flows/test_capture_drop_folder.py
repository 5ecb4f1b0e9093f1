"""Scheduled captures read drop folders (issue 21): a folder that is missing, empty, or holds
only files received before is a Completed run saying "no new files in <folder>", opening no
batch; only real failures (a bad file) are red. A person's missing file stays an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import HEADER, ROOT, batches, ingest, run_cli, table, write


def capture_deployments() -> dict[str, dict]:
    """prefect.yaml's scheduled capture deployments: name -> parameters."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    return {
        d["name"]: d["parameters"]
        for d in spec["deployments"]
        if d["entrypoint"].replace(".py:", ".").replace("/", ".") == "flows.capture.capture"
        and d.get("schedules")
    }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data folder (LEADFLOW_HOME) with no var/inbox yet; runs start in the checkout,
    as the deployments' relative rules paths expect."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("LEADFLOW_HOME", str(folder))
    monkeypatch.chdir(ROOT)
    return folder


def test_every_capture_deployment_is_completed_on_a_fresh_install(database_url, home):
    from flows.capture import capture

    deployments = capture_deployments()
    assert set(deployments) == {"capture-files", "capture-events", "capture-activities"}
    for name, parameters in deployments.items():
        assert parameters.get("drop_folder") is True, name
        state = capture(**parameters, return_state=True)
        data = state.result()
        folder = home / "var" / "inbox" / name.split("-", 1)[1].replace("files", "leads")
        assert state.is_completed(), (name, state.message)
        assert state.message == (
            f"no new files in {folder}: the folder does not exist yet "
            "(`leadflow setup` creates the drop folders)"
        )
        assert data["message"] == state.message and data["batch_ids"] == []
    assert batches(database_url).empty


def test_an_empty_folder_and_one_of_files_seen_before_say_no_new_files(database_url, home):
    inbox = home / "var" / "inbox" / "leads"
    inbox.mkdir(parents=True)
    state, data = ingest("var/inbox/leads", source="inbox", drop_folder=True)
    assert state.is_completed() and state.message == f"no new files in {inbox} (it is empty)"

    write(inbox / "a.csv", HEADER + "a@x.com,A,,,,,,,,\nb@x.com,B,,,,,,,,\n")
    state, data = ingest("var/inbox/leads", source="inbox", drop_folder=True)
    assert state.is_completed() and data["inserted"] == 2
    first = data["batch_id"]
    # The file still lies there on the next tick: not a delivery, so no batch, not even a
    # duplicate one.
    for _ in range(2):
        state, data = ingest("var/inbox/leads", source="inbox", drop_folder=True)
        assert state.is_completed(), state.message
        assert state.message == f"no new files in {inbox} (1 file(s) there were captured before)"
        assert data["seen_before"] == [first] and data["received"] == 0
    assert len(batches(database_url)) == 1

    # A new file beside it is captured; the old one is still skipped.
    write(inbox / "b.csv", HEADER + "c@x.com,C,,,,,,,,\n")
    state, data = ingest("var/inbox/leads", source="inbox", drop_folder=True)
    assert state.is_completed() and (data["inserted"], data["seen_before"]) == (1, [first])
    assert "message" not in data and "received 1" in state.message
    assert batches(database_url).status.tolist() == ["complete", "complete"]


def test_real_failures_are_red_once_and_a_rejected_file_is_not_quarantined_again(
    database_url, home
):
    inbox = home / "var" / "inbox" / "leads"
    bad = write(inbox / "bad.csv", HEADER + "not-an-email,A,,,,,,,,\nalso-not,B,,,,,,,,\n")
    state, data = ingest(str(inbox), source="inbox", drop_folder=True)
    assert state.is_failed() and "rejected" in state.message
    rejected = data["batch_id"]
    held = len(table(database_url, "quarantine"))
    assert held == 2
    # The next tick: the same file is not gated (and quarantined) again; it says where it is.
    state, data = ingest(str(inbox), source="inbox", drop_folder=True)
    assert state.is_completed(), state.message
    assert state.message == (
        f"no new files in {inbox} (1 file(s) there were captured before; batch(es) "
        f"{rejected} rejected by the gate: `leadflow quarantine list --batch {rejected}`)"
    )
    assert len(table(database_url, "quarantine")) == held
    # A file that cannot be read at all is set aside with its reason, the good one beside it
    # is captured, the run is red once, and the next tick is green: nothing is lost.
    bad.unlink()
    write(inbox / "typo.csv", "mail,name\na@x.com,A\n")
    write(inbox / "good.csv", HEADER + "good@x.com,G,,,,,,,,\n")
    state, data = ingest(str(inbox), source="inbox", drop_folder=True)
    assert state.is_failed() and "typo.csv" in state.message, state.message
    assert "1 file(s) set aside in" in state.message and "inserted 1" in state.message
    aside = inbox / "rejected"
    assert (aside / "typo.csv").read_text() == "mail,name\na@x.com,A\n"
    assert "email" in (aside / "typo.csv.reason.txt").read_text()
    assert not (inbox / "typo.csv").exists()
    state, _ = ingest(str(inbox), source="inbox", drop_folder=True)
    assert state.is_completed() and state.message.startswith("no new files"), state.message


def test_a_missing_path_without_drop_folder_still_fails(database_url, tmp_path):
    state, _ = ingest(tmp_path / "nosuch", source="person")
    assert state.is_failed() and "InputError" in state.message
    assert "nosuch: no such file or folder" in state.message


def test_ingest_of_an_empty_folder_is_exit_0_with_one_line(database_url, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(capsys, "ingest", str(tmp_path / "empty"), "--source", "web")
    assert code == 0, err
    assert out == f"no new files in {tmp_path / 'empty'} (it is empty)\n"
