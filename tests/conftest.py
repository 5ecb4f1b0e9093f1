"""Shared fixtures: a real Prefect API (test harness), and a fresh database per test on
SQLite and, when LEADFLOW_TEST_DATABASE_URL is set, on PostgreSQL (own schema per test)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="leadflow-tests-"))
os.environ["LEADFLOW_HOME"] = str(_SESSION_HOME)
os.environ.pop("LEADFLOW_DATABASE_URL", None)

import pytest  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from leadflow import store  # noqa: E402

PG_URL = os.environ.get("LEADFLOW_TEST_DATABASE_URL")
FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "unit: pure logic: no database, no Prefect server (run alone: pytest -m unit)"
    )


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(autouse=True)
def _prefect_unless_unit(request: pytest.FixtureRequest) -> None:
    """A real Prefect API (started once) for every test but the pure ones: unit tests of
    hop functions run with no server at all."""
    if request.node.get_closest_marker("unit") is None:
        request.getfixturevalue("prefect_api")


def _postgres_schema_url(schema: str) -> str:
    url = make_url(PG_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A migrated, empty database; also set as LEADFLOW_DATABASE_URL for the test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'leadflow.db'}"
        store.upgrade(url)
        monkeypatch.setenv("LEADFLOW_DATABASE_URL", url)
        yield url
        store.get_engine(url).dispose()
        return
    if not PG_URL:
        pytest.skip("LEADFLOW_TEST_DATABASE_URL not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(store.with_driver(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _postgres_schema_url(schema)
    store.upgrade(url)
    monkeypatch.setenv("LEADFLOW_DATABASE_URL", url)
    try:
        yield url
    finally:
        store.get_engine(url).dispose()
        store.engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'leadflow.db'}"
    store.upgrade(url)
    monkeypatch.setenv("LEADFLOW_DATABASE_URL", url)
    return url


@pytest.fixture
def engine(database_url: str):
    return store.get_engine(database_url)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path
