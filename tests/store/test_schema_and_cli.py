"""Migrations match the tables the code uses; the command line's contract for bad input."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from leadflow import store
from leadflow import tables as t

from helpers import run_cli, write


def test_migrations_create_exactly_the_declared_schema(database_url):
    with store.get_engine(database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
    assert diff == []


def test_missing_column_is_a_clear_error_exit_2(database_url, tmp_path, capsys):
    path = write(tmp_path / "leads.csv", "name\nA\n")
    code, out, err = run_cli(capsys, "ingest", str(path), "--source", "web", "--json")
    assert code == 2 and out == ""
    assert "leads.csv: required column(s) 'email' missing" in err


def test_bad_mapping_names_file_field_and_value(sqlite_url, tmp_path, capsys):
    mapping = write(
        tmp_path / "m.yaml", "columns:\n  Email: e-mail\nmerge:\n  default: sometimes\n"
    )
    code, _, err = run_cli(capsys, "ingest", "x.csv", "--source", "web", "--mapping", str(mapping))
    assert code == 2
    assert "m.yaml: columns: Value error, column 'Email' maps to unknown field 'e-mail'" in err
    assert (
        "m.yaml: merge.default: Input should be 'newest_non_empty' or 'oldest_non_empty' (value: 'sometimes')"
        in err
    )
