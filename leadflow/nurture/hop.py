"""The nurture hop, declared on the shared runner: enrol, touch, defer, exit, finish.

A tick at ``now`` first does two set-based steps (``store.prepare_tick``): enrolments of leads
that left ``nurturing`` end (became MQL, disqualified, ...), and enrolments that follow an
older version of ``rules/cadences.yaml`` are kept or re-planned per ``on_change``. Then the hop
runs over the candidates (``store.candidates``: leads with a touch due, and nurturing leads in
no cadence) with ``LOCKED_IDS`` claims, so two overlapping ticks never work the same lead. Per
batch:

- ``store.fetch_state`` reads, inside the claim's transaction, the leads' enrolments (all of
  them: the history decides re-entry), their touches of the last 7 days and the engagement
  that ends or suppresses a cadence;
- ``nurture_batch`` hands them to ``plan.plan_batch`` (pure: enrols, then for every due
  enrolment ends, exits, suppresses, defers, renders and queues; see
  ``leadflow/nurture/plan.py``) and turns the plan into the runner's result;
- the runner gates the batch with ``suites/nurtured.yaml`` and ``store.persist_plan`` writes,
  in one transaction, the enrolments, the touches (unique per (enrolment, step)), the outbox
  messages (key ``touch:<lead>:<cadence>:<entry>:<step>``), ledger notes, and any lead
  disqualified by a finished cadence.

Messages are sent by the outbox sender after the hop: a rerun, a retry or an overlapping run
never queues a step twice, and SMTP being down leaves them queued, not lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd

from leadflow.lifecycle import Status
from leadflow.nurture.plan import COUNTERS, NurtureContext, NurtureInputs, plan_batch
from leadflow.nurture.store import fetch_state, lead_columns, persist_plan
from leadflow.queue import Strategy
from leadflow.runner import Hop, HopResult


def nurture_batch(
    leads: pd.DataFrame, inputs: NurtureInputs, context: NurtureContext, now: datetime
) -> HopResult:
    """The runner's transform: ``plan_batch``, with the leads it decided for as changes
    (status kept, or disqualified by a cadence's ``on_finish``)."""
    plan = plan_batch(leads, inputs, context, now)
    # Only the leads that move: the others keep their row untouched (the runner still
    # quarantines any lead the gate holds).
    changes = pd.DataFrame(
        {
            "id": pd.Series(plan.disqualify, dtype="int64"),
            "from_status": Status.NURTURING.value,
            "to_status": Status.DISQUALIFIED.value,
            "reason": "nurture: cadence finished without engagement",
        }
    )
    return HopResult(
        changes=changes,
        checked=plan.checked,
        stats=dict(plan.stats),
        report={"plan": plan, "now": now},
    )


def summarise(run: Any, prepared: dict[str, int], sent: dict[str, Any] | None) -> dict[str, Any]:
    """The tick's counts for the flow's result: the hop's counters over every batch, the leads
    it disqualified or quarantined, ``prepare_tick``'s counts and the sender's."""
    stats = run.stats
    summary: dict[str, Any] = {name: int(stats.get(name, 0)) for name in ("enrolled", *COUNTERS)}
    summary["deferred"] = summary["deferred_quiet"] + summary["deferred_cap"]
    summary["disqualified"] = int(run.moved.get(Status.DISQUALIFIED.value, 0))
    summary["quarantined"] = run.quarantined
    summary["batches"] = run.batches
    summary["messages_new"] = int(stats.get("messages_new", 0))
    summary |= prepared
    summary["notifications"] = sent or {}
    return summary


HOP = Hop(
    name="nurture",
    inputs=(Status.NURTURING,),
    suite="nurtured",
    # Candidates (due touches, leads in no cadence) are sparse: row locks on just those.
    strategy=Strategy.LOCKED_IDS,
    columns=lead_columns,
    fetch=fetch_state,
    transform=nurture_batch,
    persist=persist_plan,
)
