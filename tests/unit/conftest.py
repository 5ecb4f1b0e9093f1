"""Tier 1, unit: pure logic. No Prefect API (a flow run fails at once) and no database: the
database URL points where no database can be opened, so a test that reaches for one fails
instead of quietly using a file."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def _unit(no_prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    nowhere = tmp_path_factory.getbasetemp() / "unit-tests-have-no-database" / "none.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEADFLOW_DATABASE_URL", f"sqlite:///{nowhere}")
        yield
