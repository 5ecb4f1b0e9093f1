"""A file a person names that is not there is still one line and exit 2 (issue 21: only a
scheduled drop-folder run treats a missing folder as "no new files")."""

from __future__ import annotations

from helpers import batches, run_cli


def test_ingest_of_a_missing_file_is_exit_2_with_one_line(sqlite_url, tmp_path, capsys):
    missing = tmp_path / "nosuch.csv"
    code, out, err = run_cli(capsys, "ingest", str(missing), "--source", "web")
    assert (code, out) == (2, "")
    assert err == f"leadflow: {missing}: no such file or folder\n"
    assert batches(sqlite_url).empty
