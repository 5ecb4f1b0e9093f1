"""Sample reps for ``leadflow generate``: the reps of the bundled ``rules/routing.yaml`` (pools,
territories, weights, capacity, working hours in eight time zones) with time off drawn around
the generation time, so routing has someone away right now and someone away soon.

The CSV it makes is read both by ``leadflow load reps`` (``routing_rules.load_reps_csv``) and
by the reference loader (``team``, ``region``, ``countries``, ``capacity``), and accounts'
owners are drawn from its emails, so account-owner routing matches on the demo data.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from leadflow.routing.rules import Rep, load_rules
from leadflow.settings import bundled

RULES = bundled("rules") / "routing.yaml"  # the shipped rules, whatever LEADFLOW_RULES_DIR says
REGION_OF_POOL = {"na-ent": "NA", "na-com": "NA", "emea": "EMEA", "apac": "APAC", "latam": "LATAM"}


def _hours(rep: Rep) -> str:
    return "; ".join(
        f"{days} {span}" for days, spans in rep.working_hours.items() for span in spans
    )


def _time_off(rep: Rep, rng: np.random.Generator, now: datetime, away_now: bool) -> str:
    today = now.astimezone(rep.zone).date()
    windows = [(w.start, w.end) for w in rep.out_of_office]
    if away_now:  # started a few days ago, back in a few days
        windows.append(
            (
                today - timedelta(days=int(rng.integers(1, 4))),
                today + timedelta(days=int(rng.integers(1, 6))),
            )
        )
    elif rng.random() < 0.4:  # a holiday later this quarter
        start = today + timedelta(days=int(rng.integers(7, 60)))
        windows.append((start, start + timedelta(days=int(rng.integers(2, 10)))))
    return "; ".join(f"{start}..{end}" for start, end in windows)


def reps_frame(rng: np.random.Generator, now: datetime, rules_path: Path = RULES) -> pd.DataFrame:
    """One row per rep of ``rules_path``; two reps of pools with three or more reps (drawn
    with ``rng``) are out of office at ``now``."""
    rules, _, _ = load_rules(rules_path)
    crowded = [r.id for r in rules.reps if any(len(rules.pool_reps(p)) >= 3 for p in r.pools)]
    away = set(
        rng.choice(np.array(crowded, dtype=object), size=min(2, len(crowded)), replace=False)
    )
    rows = []
    for rep in rules.reps:
        region = next((REGION_OF_POOL[p] for p in rep.pools if p in REGION_OF_POOL), "OPS")
        rows.append(
            {
                "id": rep.id,
                "name": rep.name,
                "email": rep.email,
                "manager": rep.manager,
                "pools": ";".join(rep.pools),
                "territories": ";".join(rep.territories),
                "industries": ";".join(rep.industries),
                "segments": ";".join(rep.segments),
                "weight": rep.weight,
                "max_open": rep.capacity.max_open,
                "max_new_per_day": rep.capacity.max_new_per_day,
                "active": "true" if rep.active else "false",
                "timezone": rep.timezone,
                "working_hours": _hours(rep),
                "country": rep.country,
                "out_of_office": _time_off(rep, rng, now, rep.id in away),
                # What the reference loader reads (leadflow load reps --reference).
                "team": ", ".join(rep.pools),
                "region": region,
                "countries": ";".join(c for c in rep.territories if "-" not in c),
                "capacity": rep.capacity.max_open or 50,
            }
        )
    frame = pd.DataFrame(rows)
    for column in ("max_open", "max_new_per_day"):  # "400", not "400.0", in the CSV
        frame[column] = frame[column].astype("Int64")
    return frame
