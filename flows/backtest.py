"""Backtest a rule set on history, and learn a rule set from it.

Both read leads whose outcome is known; neither changes a lead. The backtest publishes its
numbers and a PNG chart (conversion by score decile) as Prefect artifacts; learning writes
an ordinary rules file that can then be backtested like any other.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Completed, Failed, State

from leadflow.scoring import backtest as metrics
from leadflow.settings import get_settings
from tasks import rules_check
from tasks import scoring as scoring_tasks


@flow(name="backtest", flow_run_name="backtest")
def backtest(
    rules: str | None = None, now: datetime | None = None, database_url: str | None = None
) -> State:
    """Score every lead with a known outcome with ``rules`` (path or block:NAME) and measure."""
    if refused := rules_check.refusal(rules_check.scoring, rules):
        return refused
    started = time.monotonic()
    settings = get_settings()
    now = now or datetime.now(UTC)
    summary = scoring_tasks.backtest_rules(database_url or settings.database_url, rules, now)
    version = summary["version"]
    if not summary.get("leads"):
        return Failed(message="no leads with a known outcome to backtest on", data=summary)
    chart = metrics.decile_chart(summary, settings.var_dir / "reports" / f"backtest-{version}.png")
    summary["chart"] = str(chart)
    summary["seconds"] = round(time.monotonic() - started, 3)
    create_table_artifact(
        key="backtest-deciles",
        table=summary["deciles"],
        description=f"Conversion and lift by score decile, rules {version}",
    )
    create_markdown_artifact(
        key="backtest",
        markdown=metrics.report_markdown(summary, chart),
        description=f"Backtest of rules {version}",
    )
    return Completed(
        message=f"rules {version}: ROC AUC {summary['roc_auc']} on {summary['leads']} leads",
        data=summary,
    )


@flow(name="learn", flow_run_name="learn")
def learn(
    out: str,
    exclude: list[str] | None = None,
    now: datetime | None = None,
    database_url: str | None = None,
    seed: int = 7,
) -> State:
    """Fit rules on leads with known outcomes and write them to ``out``."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    text, report = scoring_tasks.learn_from_history(
        database_url or get_settings().database_url, now, set(exclude or []), seed
    )
    if text is None:
        return Failed(message=report["error"], data={"leads": report["leads"]})
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    report["out"] = str(path)
    report["excluded"] = sorted(exclude or [])
    report["seconds"] = round(time.monotonic() - started, 3)
    create_markdown_artifact(
        key="learned-rules",
        markdown=_learn_markdown(report),
        description="Rules learned from history",
    )
    message = (
        f"{report['rules']} rules from {report['leads']} leads; held-out AUC model "
        f"{report['model_auc_held_out']}, rules {report['rules_auc_held_out']}"
    )
    if report["leakage_warning"]:
        message += (
            " - AUC this high usually means a column leaks the outcome: check and --exclude it"
        )
    return Completed(message=message, data=report)


def _learn_markdown(report: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Rules learned from history",
            f"Written to `{report['out']}`: {report['rules']} rules from {report['levels']} levels.",
            f"Trained on {report['train']} leads, tested on {report['held_out']} held-out leads.",
            f"Held-out ROC AUC: model **{report['model_auc_held_out']}**, integer rules **{report['rules_auc_held_out']}**.",
            f"Excluded: {', '.join(report['excluded']) or 'nothing beyond identifiers and outcome fields'}.",
        ]
    )
