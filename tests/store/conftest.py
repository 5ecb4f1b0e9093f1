"""Tier 2, store: a database (the ``database_url``, ``engine`` and ``sqlite_url`` fixtures),
no Prefect API: a flow run fails at once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _store(no_prefect_api: None) -> None:
    pass
