"""Tier 4, e2e: the ``leadflow`` and ``prefect`` commands as processes, the web app on a
real port, the demo and the deployed stack. On the session's Prefect test server
(``prefect_api``) unless a module overrides ``_prefect_server`` (test_web_hardening.py:
nothing there talks to a Prefect API)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _prefect_server(prefect_api: None) -> None:
    pass
