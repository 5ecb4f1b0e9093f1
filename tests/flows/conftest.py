"""Tier 3, flows: Prefect flows and tasks run as Prefect runs them, which needs an API: the
session's test server (``prefect_api``), started by the first test here."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _prefect_server(prefect_api: None) -> None:
    pass
