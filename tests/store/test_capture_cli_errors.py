"""Capture you can trust (issue 8): a mapped column missing from the file is exit 2 naming
it and the closest header, and nothing is written."""

from __future__ import annotations

from helpers import batches, run_cli, write

# --------------------------------------------------------------------------- 1. typos


def test_a_mapped_column_missing_from_the_file_is_exit_2_naming_it_and_the_closest(
    sqlite_url, tmp_path, capsys
):
    mapping = write(
        tmp_path / "crm.yaml",
        "columns:\n  E-Mail Adress: email\n  Organisation: company\n  Full Name: name\n",
    )
    path = write(
        tmp_path / "crm.csv", "Email Address,Organization,Full Name\na@x.com,Acme,Ann Lee\n"
    )
    code, out, err = run_cli(
        capsys, "ingest", str(path), "--source", "crm", "--mapping", str(mapping)
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1, err  # one clear line, no traceback
    assert "'E-Mail Adress' -> 'Email Address'" in err
    assert "'Organisation' -> 'Organization'" in err
    assert batches(sqlite_url).empty  # nothing was written
