"""The built wheel runs leadflow on a host without the checkout: installed into a folder of
its own (``installed_package``), run from another folder with a third as its data folder
(``LEADFLOW_HOME``), every flow finds its rules, suites, templates, lists, mappings and
migrations in the package, and its data under ``LEADFLOW_HOME``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, func, select

from leadflow import tables as t
from leadflow.config import content_version

from helpers import ROOT

NOW = "2026-11-24T13:00:00+00:00"


def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


def test_the_installed_wheel_runs_every_flow_away_from_the_checkout(installed_package, tmp_path):
    from prefect.settings import PREFECT_API_URL

    site = installed_package.site
    elsewhere, home = tmp_path / "elsewhere", tmp_path / "home"
    elsewhere.mkdir()
    home.mkdir()
    env = installed_package.env(home, PREFECT_API_URL=PREFECT_API_URL.value())
    python, leadflow = sys.executable, str(Path(sys.executable).with_name("leadflow"))

    # The code, the rules and the suites are the installed package's, not the checkout's.
    where = json.loads(
        run(
            [
                python,
                "-c",
                "import json, app, blocks, flows, leadflow, sql, tasks\n"
                "from leadflow import quality\n"
                "from leadflow.settings import get_settings\n"
                "print(json.dumps({'modules': [m.__file__ for m in "
                "(app, blocks, flows, leadflow, sql, tasks)], 'rules': str(get_settings()"
                ".rules_dir), 'suites': str(quality.SUITES_DIR), 'home': str(get_settings()"
                ".home)}))",
            ],
            env,
            elsewhere,
        )
    )
    assert all(Path(m).is_relative_to(site) for m in where["modules"]), where
    assert Path(where["rules"]) == site / "leadflow" / "defaults" / "rules"
    assert Path(where["suites"]) == site / "leadflow" / "defaults" / "suites"
    assert Path(where["home"]) == home
    assert not Path(where["rules"]).is_relative_to(ROOT)

    def leadflow_json(*argv: str) -> dict:
        return json.loads(run([leadflow, *argv, "--json"], env, elsewhere))

    leadflow_json("generate", "--leads", "300", "--out", "sample", "--now", NOW)
    ingested = leadflow_json("ingest", "sample/leads.csv", "--source", "wheel", "--now", NOW)
    assert ingested["inserted"] > 250, ingested
    piped = leadflow_json("run", "--now", NOW)
    assert {"enrich", "score", "route"} <= set(piped["hops"]), piped
    # A relative rules name the checkout has under rules/ is the package's rules file here.
    rescored = leadflow_json("rescore", "--rules", "rules/scoring.yaml", "--dry-run", "--now", NOW)
    shipped = Path(where["rules"]) / "scoring.yaml"
    assert rescored["version"] == content_version(shipped.read_text(encoding="utf-8")), rescored
    assert rescored["rescored"] > 0 and rescored["dry_run"], rescored
    # SLA policies; recycle loads the cadences and compiles their templates; the KPI views.
    # (nurture's links need the public-site block: tests/e2e/test_nurture_e2e.py.)
    for command in ("sla", "recycle", "report"):
        leadflow_json(command, "--now", NOW)
    audit = leadflow_json("audit")
    assert audit["ok"], audit

    database = home / "var" / "leadflow.db"
    assert database.is_file(), sorted(p.name for p in (home / "var").iterdir())
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as conn:
        routed = conn.execute(
            select(func.count()).select_from(t.leads).where(t.leads.c.status == "routed")
        ).scalar_one()
    engine.dispose()
    assert routed > 0
    assert (home / "var" / "gx").is_dir()  # the gates' results: the data folder, not cwd
    assert not (elsewhere / "var").exists()


def test_the_pull_step_enters_the_workers_own_data_folder(installed_package, tmp_path):
    """prefect.yaml's pull step, run as a flow run's process runs it: into LEADFLOW_HOME
    (created); with the installed package and no LEADFLOW_HOME, one line naming it."""
    step = (
        "import json, os\n"
        "from app.deploy_steps import enter_home\n"
        "try:\n"
        "    print(json.dumps([enter_home(), os.getcwd()]))\n"
        "except ValueError as exc:\n"
        "    print(json.dumps(str(exc)))"
    )
    home = tmp_path / "not" / "yet" / "there"
    env = installed_package.env(home)
    entered, cwd = json.loads(run([sys.executable, "-c", step], env, tmp_path))
    assert entered == {"directory": str(home)} and cwd == str(home) and home.is_dir()
    del env["LEADFLOW_HOME"]
    refused = json.loads(run([sys.executable, "-c", step], env, tmp_path))
    assert refused.startswith("LEADFLOW_HOME is not set on this worker"), refused
    assert "\n" not in refused
