"""What recycling does to the leads that stalled, in pure steps over DataFrames.

``leadflow.recycle.hop.recycle_batch`` reads as their sequence: the leads going back with
their reason code, their new recycle count and where they go next (``next_status``), the
first lifecycle step (``recycled``: score, temperature, owner) and the second
(``back_to_nurture``), the long-term cadence's leads, the assignments recycling ends (``releases``, ``stopped``) and the
reps' cool-downs (``cooldowns``), the gate's frame and the run's counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from leadflow.lifecycle import Status
from leadflow.recycle.rules import RecycleRules


def going_back(leads: pd.DataFrame, reasons: pd.Series) -> pd.DataFrame:
    """The leads that stalled (a reason code, not None), with it in ``code``."""
    going = leads[reasons.notna()].copy()
    going["code"] = reasons[reasons.notna()]
    return going


def recycle_count(going: pd.DataFrame) -> pd.Series:
    """The count each lead will have once recycled: one more than before (none counts 0)."""
    return going["recycle_count"].fillna(0).astype(int) + 1


def next_status(over: pd.Series, rules: RecycleRules) -> np.ndarray:
    """Where a recycled lead goes: ``disqualified`` once recycled more than ``max_recycles``
    times when ``after_max`` says so, ``nurturing`` otherwise (the long-term cadence is a
    nurture too)."""
    return np.where(
        over & (rules.after_max == "disqualify"), Status.DISQUALIFIED.value, Status.NURTURING.value
    )


def recycled_score(scores: pd.Series, rules: RecycleRules) -> pd.Series:
    """The score after recycling, as ``score.action`` says; no score stays none.

    ``decay`` with ``factor`` 0.5 turns 71 into 35.5, ``reset`` turns it into 0.0, ``keep``
    keeps 71.
    """
    score = pd.to_numeric(scores, errors="coerce")
    if rules.score.action == "decay":
        score = (score * rules.score.factor).round(2)
    elif rules.score.action == "reset":
        score = score.where(score.isna(), 0.0)
    return score


def temperature_of(score: pd.Series, before: pd.Series, hot: float, warm: float) -> np.ndarray:
    """The temperature of the new score in the scoring bands; a lead without a score keeps
    the one it had.

    With ``hot`` 70 and ``warm`` 40: 75 is hot, 40 warm, 35.5 cold, and no score with
    ``before`` warm stays warm.
    """
    temperature = np.select([score >= hot, score >= warm], ["hot", "warm"], default="cold")
    return np.where(score.isna(), before.astype(object), temperature)


def recycled(
    going: pd.DataFrame, count: pd.Series, rules: RecycleRules, hot: float, warm: float
) -> pd.DataFrame:
    """The first lifecycle step, ``<status> -> recycled``, for ``lifecycle.apply``: the reason
    (``recycled: <code>``), the score before in the details, and the lead's new count, score,
    temperature and owner (kept or cleared, as ``owner`` says)."""
    score = recycled_score(going["score"], rules)
    temperature = temperature_of(score, going["temperature"], hot, warm)
    owner = going["owner_rep_id"] if rules.owner == "keep" else pd.Series(pd.NA, index=going.index)
    return pd.DataFrame(
        {
            "id": going["id"].astype("int64").to_numpy(),
            "from_status": going["status"].to_numpy(),
            "to_status": Status.RECYCLED.value,
            "reason": ("recycled: " + going["code"]).to_numpy(),
            "details": [
                {"recycle_count": int(n), "score_before": None if pd.isna(b) else float(b)}
                for n, b in zip(count, going["score"], strict=True)
            ],
            "recycle_count": count.to_numpy(),
            "score": score.to_numpy(),
            "temperature": temperature,
            "owner_rep_id": owner.astype("Int64").to_numpy(),
        }
    )


def back_to_nurture(
    changes: pd.DataFrame,
    going: pd.DataFrame,
    over: pd.Series,
    then: np.ndarray,
    rules: RecycleRules,
) -> pd.DataFrame:
    """The second lifecycle step, ``recycled -> <then>``, with its reason.

    With ``max_recycles`` 3: ``back to nurture: not_accepted`` for a lead within it, and
    past it ``recycled more than 3 times`` (disqualified) or ``recycled more than 3 times:
    long-term cadence <after_max_cadence>`` (nurturing).
    """
    return pd.DataFrame(
        {
            "id": changes["id"],
            "from_status": Status.RECYCLED.value,
            "to_status": then,
            "reason": np.where(
                then == Status.DISQUALIFIED.value,
                f"recycled more than {rules.max_recycles} times",
                np.where(
                    over.to_numpy(),
                    f"recycled more than {rules.max_recycles} times: long-term cadence "
                    f"{rules.after_max_cadence}",
                    "back to nurture: " + going["code"].to_numpy(),
                ),
            ),
        }
    )


def assignments_of(assignments: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """The assignments, open or ended, of the leads going back."""
    return assignments[assignments["lead_id"].astype("int64").isin(set(ids))]


def releases(
    held: pd.DataFrame, going: pd.DataFrame, rules: RecycleRules, stamp: pd.Timestamp
) -> pd.DataFrame:
    """The open assignments end now, with the lead's reason.

    A lead recycled for ``not_now`` ends its open assignment with ``recycled: not_now``, and
    ``recycled: not_now (owner kept as contact)`` when ``owner`` is ``keep``.
    """
    open_ = held[held["released_at"].isna()]
    code_of = dict(zip(going["id"].astype("int64"), going["code"], strict=True))
    return pd.DataFrame(
        {
            "id": open_["id"].astype("int64").to_numpy(),
            "released_at": stamp,
            "released_reason": [
                f"recycled: {code_of[int(i)]}"
                + (" (owner kept as contact)" if rules.owner == "keep" else "")
                for i in open_["lead_id"]
            ],
        }
    )


def stopped(held: pd.DataFrame) -> pd.DataFrame:
    """The open assignments recycling ends (``assignment_id``, ``lead_id``): their SLA timers
    close with them."""
    open_ = held[held["released_at"].isna()]
    return pd.DataFrame(
        {
            "assignment_id": open_["id"].astype("int64").to_numpy(),
            "lead_id": open_["lead_id"].astype("int64").to_numpy(),
        }
    )


def cooldowns(held: pd.DataFrame, rules: RecycleRules) -> pd.DataFrame:
    """A rep who gave the lead back (rejected it, or lost it to the SLA) is not offered it
    again for ``cooldown`` after that release; a cool-down already set stays.

    Released ``rejected: busy`` on 1 March with ``cooldown`` 90d: ``avoid_until`` 30 May.
    """
    gave_back = held[
        held["released_reason"].fillna("").str.startswith(("rejected", "sla"))
        & held["avoid_until"].isna()
    ]
    return pd.DataFrame(
        {
            "id": gave_back["id"].astype("int64").to_numpy(),
            "avoid_until": gave_back["released_at"] + rules.delay(rules.cooldown),
        }
    )


def long_term_leads(changes: pd.DataFrame, over: pd.Series, then: np.ndarray) -> pd.Series:
    """The leads past ``max_recycles`` that stay in nurture: the long-term cadence's."""
    return changes.loc[over.to_numpy() & (then == Status.NURTURING.value), "id"]


def gate_frame(
    changes: pd.DataFrame,
    going: pd.DataFrame,
    count: pd.Series,
    over: pd.Series,
    then: np.ndarray,
    rules: RecycleRules,
) -> pd.DataFrame:
    """What ``suites/recycled.yaml`` checks, one row per lead: its reason, count and next
    status, that its owner went (or was kept on purpose), and that past ``max_recycles`` it
    was disqualified or went to the long-term cadence."""
    return pd.DataFrame(
        {
            "id": changes["id"],
            "reason": going["code"].to_numpy(),
            "recycle_count": count.to_numpy(),
            "next_status": then,
            "owner_cleared": changes["owner_rep_id"].isna() | (rules.owner == "keep"),
            "within_max": (
                ~over | (rules.after_max == "cadence") | (then == Status.DISQUALIFIED.value)
            ).to_numpy(),
        }
    )


def batch_stats(
    leads: pd.DataFrame, going: pd.DataFrame, then: np.ndarray, long_term: pd.Series
) -> dict[str, Any]:
    """The batch's counts: recycled, disqualified, long-term, looked at, then per reason
    (``reason:lost`` for every ``lost: <reason>``) and per status left (``from:accepted``)."""
    codes = going["code"].str.split(":").str[0].value_counts()
    return {
        "recycled": int((then == Status.NURTURING.value).sum()),
        "disqualified": int((then == Status.DISQUALIFIED.value).sum()),
        "long_term": len(long_term),
        "looked_at": len(leads),
        **{f"reason:{k}": int(v) for k, v in codes.items()},
        **{f"from:{k}": int(v) for k, v in going["status"].value_counts().items()},
    }
