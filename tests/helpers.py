"""Helpers for hop tests: run flows, read tables, check the ledger."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import select

from leadflow import audit, store
from leadflow import tables as t


def ingest(path: Any, source: str = "test", mapping: Any = None, **kwargs: Any) -> tuple[Any, dict]:
    from flows.capture import capture

    state = capture(
        str(path),
        source=source,
        mapping_path=str(mapping) if mapping else None,
        return_state=True,
        **kwargs,
    )
    data = state.result(raise_on_failure=False)
    return state, data if isinstance(data, dict) else {"error": data}


def table(url: str, name: str) -> pd.DataFrame:
    """All rows of a table, in primary-key order."""
    tbl = getattr(t, name)
    with store.get_engine(url).connect() as conn:
        return store.read_frame(conn, select(tbl).order_by(*tbl.primary_key.columns))


def assert_ledger_ok(url: str) -> dict:
    with store.get_engine(url).connect() as conn:
        report = audit.run_audit(conn)
    assert report.ok, report.problems
    return report.as_dict()
