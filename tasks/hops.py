"""What every hop after capture does the same way: claim a bounded batch of leads in its
input status, read it as a DataFrame, gate what it produced, and write results, new
statuses, quarantined leads and the gate's verdict in one transaction."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.lifecycle import Status
from tasks import quality


def load_claimed(engine: Engine, token: str, columns: Sequence[str]) -> pd.DataFrame:
    leads = t.leads
    statement = (
        select(*[leads.c[c] for c in columns])
        .where(leads.c.claimed_by == token)
        .order_by(leads.c.id)
    )
    with engine.connect() as conn:
        return store.read_frame(conn, statement)


def release(engine: Engine, token: str) -> int:
    with engine.begin() as conn:
        return store.release_claims(conn, token)


@contextmanager
def claimed(engine: Engine, token: str) -> Iterator[None]:
    """Give the claim back if processing the batch fails, so the next run can retry it
    without waiting for the lease to expire."""
    try:
        yield
    except BaseException:
        release(engine, token)
        raise


@dataclass
class HopOutcome:
    """What one batch of a hop did (small: this is what tasks return to flows)."""

    hop: str
    claimed: int = 0
    moved: dict[str, int] = field(default_factory=dict)  # to-status -> leads
    quarantined: int = 0
    gate: quality.GateResult | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


def _jsonable_rows(frame: pd.DataFrame) -> list[str]:
    return [json.dumps(row, default=str, ensure_ascii=False) for row in frame.to_dict("records")]


def gate_and_write(
    engine: Engine,
    *,
    hop: str,
    suite: str,
    actor: str,
    token: str,
    produced: pd.DataFrame,
    changes: pd.DataFrame,
    now: datetime,
    flow_run_id: str | None,
    max_quarantine_rate: float | None = None,
    batch_ref: str,
) -> HopOutcome:
    """Gate ``produced`` (one row per lead, keyed by ``id``) and write ``changes``.

    ``changes`` is what ``lifecycle.apply`` takes (id, from_status, to_status, fields...).
    Leads failing a row-level expectation move to ``quarantined`` instead, with a
    quarantine row naming what they broke. A batch-level failure writes nothing but the
    verdict, releases the claim and raises ``quality.GateFailed``.
    """
    split = quality.split_rows(suite, produced)
    result = quality.check_batch(
        suite,
        split.passed,
        batch_ref=batch_ref,
        received=len(produced),
        quarantined=len(split.quarantined),
        row_checks=split.checks,
        max_quarantine_rate=max_quarantine_rate,
        row_validation=split.validation,
    )
    outcome = HopOutcome(hop=hop, claimed=len(produced), gate=result)
    if not result.success:
        with engine.begin() as conn:
            quality.record(conn, result, flow_run_id=flow_run_id, at=store.utcnow())
            store.release_claims(conn, token)
        raise quality.GateFailed(result)
    bad_ids = set(split.quarantined["id"].tolist())
    changes = changes.copy()
    changes["claimed_by"] = None
    changes["claim_expires_at"] = pd.NaT
    if bad_ids:
        held = changes["id"].isin(bad_ids)
        reasons = dict(zip(split.quarantined["id"], split.quarantined["reasons"], strict=True))
        changes.loc[held, "to_status"] = Status.QUARANTINED.value
        if "reason" in changes.columns:
            changes.loc[held, "reason"] = [
                f"gate {suite}: " + ", ".join(reasons[i]) for i in changes.loc[held, "id"]
            ]
    with engine.begin() as conn:
        lifecycle.apply(
            conn, changes, actor=actor, at=now, claimed_by=token, flow_run_id=flow_run_id
        )
        if bad_ids:
            bad = split.quarantined
            store.bulk_insert(
                conn,
                t.quarantine,
                pd.DataFrame(
                    {
                        "hop": hop,
                        "lead_id": bad["id"].to_numpy(),
                        "record": _jsonable_rows(bad.drop(columns=["reasons"])),
                        "reasons": store.json_column(bad["reasons"]),
                        "flow_run_id": flow_run_id,
                        "created_at": pd.Timestamp(store.utcnow()),
                    }
                ),
            )
        quality.record(conn, result, flow_run_id=flow_run_id, at=store.utcnow())
    outcome.quarantined = len(bad_ids)
    outcome.moved = changes["to_status"].value_counts().to_dict()
    return outcome
