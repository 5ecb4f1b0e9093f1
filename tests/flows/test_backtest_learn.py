"""Backtest and learned rules on generated history (outcomes drawn from a hidden model)."""

from datetime import UTC, datetime

import pytest

from app import cli
from app.generate import generate
from leadflow.scoring.rules import load_rules

from helpers import ingest

NOW = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def history(database_url, tmp_path):
    files = generate(tmp_path / "sample", leads=4000, seed=21, now=NOW)
    ingest(files["leads"], source="sample", now=NOW)
    ingest(files["events"], source="sample", target="events", now=NOW)
    from flows.enrich import enrich

    assert enrich(
        now=NOW, provider=f"file:{files['firmographics']}", return_state=True
    ).is_completed()
    return files


def test_backtest_measures_rules_on_known_outcomes(database_url, history, capsys):
    code = cli.main(["backtest", "--now", NOW.isoformat(), "--json"])
    import json

    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["leads"] > 2000 and 0 < report["won"] < report["leads"]
    assert report["roc_auc"] > 0.65  # the example rules know what the hidden model rewards
    top, bottom = report["deciles"][0], report["deciles"][-1]
    assert top["decile"] == 10 and top["conversion"] > 2 * bottom["conversion"]
    assert 0 <= report["precision_at_threshold"] <= 1 and 0 <= report["recall_at_threshold"] <= 1
    from pathlib import Path

    chart = Path(report["chart"])
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learned_rules_are_plain_rules_and_nearly_as_good_as_the_model(
    database_url, history, tmp_path, capsys
):
    out = tmp_path / "learned.yaml"
    code = cli.main(["learn", "--out", str(out), "--now", NOW.isoformat(), "--json"])
    import json

    report = json.loads(capsys.readouterr().out)
    assert code == 0 and out.exists()
    assert report["model_auc_held_out"] > 0.68
    assert abs(report["rules_auc_held_out"] - report["model_auc_held_out"]) <= 0.02
    rules, _, text = load_rules(out)
    assert all(isinstance(rule.points, int) for rule in rules.fit)
    used = {f.split(".")[0] for f in rules.fields()}
    assert {"attributes", "seniority"} <= used  # mapped fields and attributes alike
    assert "budget" in text  # a number that arrived as text, binned into ranges
    assert "missing: true" in text  # missing values are a level of their own
    # The learned file backtests like any other.
    assert cli.main(["backtest", "--rules", str(out), "--now", NOW.isoformat(), "--json"]) == 0
    capsys.readouterr()

    # Leaky columns can be left out.
    code = cli.main(
        [
            "learn",
            "--out",
            str(tmp_path / "lean.yaml"),
            "--exclude",
            "lead_form",
            "seniority",
            "--now",
            NOW.isoformat(),
            "--json",
        ]
    )
    lean = json.loads(capsys.readouterr().out)
    assert code == 0 and "lead_form" not in (tmp_path / "lean.yaml").read_text()
    assert lean["excluded"] == ["lead_form", "seniority"]
