"""Shared fixtures and the test tiers.

The tests live in four tiers, one folder each, run in this order (``make test`` runs them
all; ``make test-fast`` the first two):

- ``unit/<concern>/``: pure logic: no database, no Prefect server.
- ``store/``: a database (SQLite, and PostgreSQL when LEADFLOW_TEST_DATABASE_URL is set,
  through the ``database_url``/``engine`` fixtures), no Prefect server.
- ``flows/``: Prefect flows or tasks that need the API: the session's test server
  (``prefect_test_harness``), started by the first test that needs it.
- ``e2e/``: the ``leadflow`` and ``prefect`` commands as processes, the web app served on a
  real port, the demo and the deployed stack.

Each test is marked with its tier (``unit``, ``store``, ``flow``, ``e2e``: ``pytest -m unit``
selects one) and a test module outside these folders is an error. Only ``flows/conftest.py``
and ``e2e/conftest.py`` use ``prefect_api``; ``unit/`` and ``store/`` refuse Prefect's
temporary server, so a test there that runs a flow fails at once. Helpers shared by test
modules are in ``helpers.py`` (``pythonpath = ["tests"]``)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
# Commands run as processes start their own temporary Prefect server: on 2 busy cores that
# takes longer than Prefect's default 20 s (measured ~30 s during a full run).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="leadflow-tests-"))
os.environ["LEADFLOW_HOME"] = str(_SESSION_HOME)
os.environ.pop("LEADFLOW_DATABASE_URL", None)

import pytest  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from leadflow import store  # noqa: E402

from helpers import PG_URL, _postgres_schema_url, captured_leads, copy_rules  # noqa: E402

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
# folder -> marker, in the order the tiers run
TIERS = {"unit": "unit", "store": "store", "flows": "flow", "e2e": "e2e"}


def _tier(item: pytest.Item) -> str:
    try:
        folder = item.path.relative_to(TESTS).parts[0]
    except ValueError:
        folder = ""
    if folder not in TIERS:
        raise pytest.UsageError(
            f"{item.nodeid}: a test belongs in one of tests/{', tests/'.join(TIERS)}"
        )
    return folder


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier and run the tiers in order: unit and store tests run
    before the first test that starts the Prefect test server.

    With workers (``make test``: ``-n 2 --dist loadgroup``), the e2e tier is one group: one
    worker runs it from the start, one test at a time (each starts servers and processes of
    its own), while the other takes the unit, store and flows tests, then both share what
    is left."""
    order = list(TIERS)
    for item in items:
        tier = _tier(item)
        item.add_marker(TIERS[tier])
        if tier == "e2e":
            item.add_marker(pytest.mark.xdist_group("e2e"))
    items.sort(key=lambda item: order.index(_tier(item)))


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A real Prefect API: the test harness's server, started once for the session by the
    first test that asks (the autouse fixtures of flows/ and e2e/)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def no_prefect_api() -> Iterator[None]:
    """No Prefect API for this module: Prefect may not start its temporary server, so a flow
    or task called outside ``.fn`` fails at once ("No Prefect API URL provided") instead of
    quietly starting one. Autouse in unit/ and store/ (it does not stop a test server the
    session already runs). Per module: building Prefect settings takes some 60 ms."""
    from prefect.settings import PREFECT_SERVER_ALLOW_EPHEMERAL_MODE, temporary_settings

    with temporary_settings({PREFECT_SERVER_ALLOW_EPHEMERAL_MODE: False}):
        yield


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


@pytest.fixture
def shipped_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped rules, used by every run of the test (LEADFLOW_RULES_DIR)."""
    return copy_rules(tmp_path, monkeypatch)


@pytest.fixture
def captured(database_url: str, shipped_rules: Path, tmp_path: Path) -> str:
    """Leads waiting in ``captured``: what a run would move first."""
    return captured_leads(database_url, tmp_path)
