"""`leadflow setup`: make a host ready to run leadflow's deployments, idempotently.

Each step in ``STEPS`` makes sure of one thing and says, in one line, what it found or did:
the database migrated to head, the drop folders the capture deployments read, leadflow's
blocks created from ``LEADFLOW_*`` variables, the ``leadflow`` process work pool, the
deployments of prefect.yaml (the package's own copy unless ``--prefect-file``) and the ops
automations (which need the deployments for their schedule checks). Steps that
need a Prefect server are skipped, and say so, when ``PREFECT_API_URL`` is not set (rather
than writing blocks into a temporary API that is gone when the command ends). Running it
again changes nothing that is there (``--overwrite`` replaces the blocks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.cli.common import EXIT_BAD_INPUT, EXIT_OK, Command, dumps, emit, fail

POOL = "leadflow"  # the work pool prefect.yaml's deployments name
NO_SERVER = "skipped (no Prefect server: PREFECT_API_URL is not set)"


@dataclass(frozen=True)
class Step:
    """One thing ``leadflow setup`` makes sure of. ``run`` does it idempotently and returns
    one line for a person and the details for ``--json``. ``needs_prefect``: skipped, with
    ``NO_SERVER``, when no Prefect server is configured."""

    name: str
    run: Callable[[argparse.Namespace], tuple[str, dict[str, Any]]]
    needs_prefect: bool = False


def _database(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from sqlalchemy.engine import make_url

    from leadflow import store
    from leadflow.settings import get_settings

    url = get_settings().database_url
    before = store.current_revision(url)
    revision = store.upgrade(url)
    shown = make_url(url).render_as_string(hide_password=True)
    done = "at head" if before == revision else f"migrated from {before or 'empty'} to"
    return f"{done} revision {revision}: {shown}", {
        "url": shown,
        "revision": revision,
        "before": before,
    }


def _drop_folders(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from leadflow.settings import get_settings

    folders = get_settings().drop_folders()
    created = [kind for kind, path in folders.items() if not path.is_dir()]
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    where = get_settings().inbox_dir
    kinds = ", ".join(folders)
    line = (
        f"created {', '.join(created)} in {where}" if created else f"present in {where} ({kinds})"
    )
    return line, {
        "folders": {kind: str(path) for kind, path in folders.items()},
        "created": created,
    }


def _blocks(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from blocks import registry

    report = registry.init(overwrite=args.overwrite)
    groups: dict[str, list[str]] = {}
    for name, outcome in report.items():
        groups.setdefault(outcome.split(" ", 1)[0], []).append(name)
    parts = [f"{word} {', '.join(names)}" for word, names in groups.items() if word != "skipped"]
    if skipped := groups.get("skipped"):
        parts.append(f"skipped {', '.join(skipped)} (their variables are not set)")
    if groups.get("exists"):
        parts.append("--overwrite replaces existing ones")
    return "; ".join(parts), {"blocks": report}


def _work_pool(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(POOL)
        except ObjectNotFound:
            pool = None
        if pool is not None:
            line = f"{POOL!r} exists (type {pool.type}, kept)"
            if pool.type != ProcessWorker.type:
                line += f"; leadflow's deployments expect a {ProcessWorker.type} pool"
            return line, {"name": POOL, "type": pool.type, "created": False}
        client.create_work_pool(
            WorkPoolCreate(
                name=POOL,
                type=ProcessWorker.type,
                base_job_template=ProcessWorker.get_default_base_job_template(),
            )
        )
    return (
        f"created {POOL!r} (type {ProcessWorker.type}); start a worker: "
        f"prefect worker start --pool {POOL}",
        {"name": POOL, "type": ProcessWorker.type, "created": True},
    )


def _deployments(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``prefect --no-prompt deploy --all`` of ``--prefect-file`` (default: the prefect.yaml
    the package ships), run from the data folder: an installed wheel deploys with no
    checkout. Entrypoints are module paths, so nothing depends on where this runs."""
    import subprocess
    from pathlib import Path

    from leadflow.settings import bundled, get_settings

    if args.no_deploy:
        return "skipped (--no-deploy)", {"deployed": []}
    source = Path(args.prefect_file) if args.prefect_file else bundled("prefect.yaml")
    if not source.is_file():
        raise FileNotFoundError(f"--prefect-file {source}: no such file")
    prefect = Path(sys.executable).with_name("prefect")
    home = get_settings().home
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all", "--prefect-file", str(source.resolve())],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"prefect deploy of {source} failed: {tail[0]}")
    import yaml
    from prefect.client.orchestration import get_client

    wanted = {d["name"] for d in yaml.safe_load(source.read_text())["deployments"]}
    with get_client(sync_client=True) as client:
        there = {d.name for d in client.read_deployments()}
    if missing := sorted(wanted - there):
        raise RuntimeError(f"prefect deploy of {source} left out {', '.join(missing)}")
    names = sorted(wanted)
    return f"deployed {len(names)} from {source}", {"deployed": names, "prefect_file": str(source)}


def _automations(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The ops automations (app/automations.py). The per-deployment ones need the
    deployments: before `prefect deploy` they are left for a second run."""
    from collections import Counter

    from prefect.client.orchestration import get_client

    from app.automations import create_automations

    with get_client(sync_client=True) as client:
        deployed = len(client.read_deployments())
        lines = create_automations(client)
    counts = Counter(line.split(" ", 1)[0] for line in lines)
    line = ", ".join(f"{n} {verb}" for verb, n in sorted(counts.items())) or "none"
    if not deployed:
        line += (
            "; no deployments yet: after `prefect --no-prompt deploy --all`, run "
            "`leadflow setup` again for the per-deployment schedule checks"
        )
    return line, {"automations": lines}


# What `leadflow setup` does, in order. To add a step, write a function
# (args) -> (one line, details) beside the others and add a Step here.
STEPS: list[Step] = [
    Step("database", _database),
    Step("drop folders", _drop_folders),
    Step("blocks", _blocks, needs_prefect=True),
    Step("work pool", _work_pool, needs_prefect=True),
    Step("deployments", _deployments, needs_prefect=True),
    Step("automations", _automations, needs_prefect=True),
]


def cmd_setup(args: argparse.Namespace) -> int:
    """Run every step in order; stop at the first that fails (one line naming it, exit 2:
    fix it and run again, the steps done stay done)."""
    from blocks.registry import api_url

    server = api_url()
    done: list[dict[str, Any]] = []
    for step in STEPS:
        if step.needs_prefect and not server:
            done.append({"step": step.name, "result": NO_SERVER, "skipped": True})
            continue
        try:
            line, detail = step.run(args)
        except Exception as exc:
            if args.debug:
                raise
            problem = f"setup step {step.name!r} failed: {_why(exc, server)}"
            problem = " ".join(problem.split())  # one line, whatever the error's text
            _print(args, done, server, problem)
            return fail(f"{problem}; fix it and run `leadflow setup` again", EXIT_BAD_INPUT)
        done.append({"step": step.name, "result": line, **detail})
    _print(args, done, server, None)
    return EXIT_OK


def _why(exc: Exception, server: str | None) -> str:
    import httpx

    if isinstance(exc, httpx.TransportError):
        return (
            f"the Prefect API at {server} does not answer ({type(exc).__name__}); start it "
            "(`prefect server start`), or unset PREFECT_API_URL to set up without it"
        )
    return f"{type(exc).__name__}: {exc}"


def _print(
    args: argparse.Namespace, done: list[dict[str, Any]], server: str | None, error: str | None
) -> None:
    data = {"steps": done, "prefect_api": server, "ok": error is None}
    if error is not None:
        data["error"] = error
        if args.json:
            print(dumps(data))
        else:
            for step in done:
                print(f"{step['step']}: {step['result']}")
        sys.stdout.flush()
        return
    emit(args, data, lambda d: "\n".join(f"{s['step']}: {s['result']}" for s in d["steps"]))


ENVIRONMENT = """\
reads from the environment:
  LEADFLOW_HOME            the data folder: var/ (the demo's SQLite database and the drop
                           folders var/inbox/leads, var/inbox/events, var/inbox/activities)
  LEADFLOW_DATABASE_URL    the database to migrate (else the Leadflow Database block named by
  LEADFLOW_DATABASE_BLOCK  LEADFLOW_DATABASE_BLOCK, else the 'leadflow' block when a Prefect
                           server is set, else var/leadflow.db under LEADFLOW_HOME)
  PREFECT_API_URL          the Prefect server the blocks and the work pool go to (or the
                           active Prefect profile's); unset: those steps are skipped

blocks created when their variables are set (an existing block is kept; --overwrite):
  leadflow                 LEADFLOW_DATABASE_URL
  leadflow-capture-token   LEADFLOW_CAPTURE_TOKEN
  leadflow-smtp            LEADFLOW_SMTP_HOST, _PORT, _USERNAME, _PASSWORD, _FROM,
                           _STARTTLS, _SSL, _CA_FILE
  leadflow-site            LEADFLOW_PUBLIC_URL, LEADFLOW_UNSUBSCRIBE_SECRET (random if unset)
  leadflow-webhook         LEADFLOW_WEBHOOK_URL, _TOKEN
  leadflow-firmographics   LEADFLOW_FIRMOGRAPHICS_URL, _KEY
  leadflow-rules           LEADFLOW_RULES_DIR
  leadflow-ops             LEADFLOW_OPS_WEBHOOK_URL, _TOKEN
  leadflow-hubspot         LEADFLOW_HUBSPOT_TOKEN, _URL, _CALLS_PER_10S
  leadflow-salesforce      LEADFLOW_SALESFORCE_CLIENT_ID, _CLIENT_SECRET, _LOGIN_URL,
                           _USERNAME, _PASSWORD, _CA_FILE, _API_VERSION
  leadflow-caldav          LEADFLOW_CALDAV_URL, _USERNAME, _PASSWORD, _CALENDARS,
                           _TIMEOUT_SECONDS, _CACHE_SECONDS

work pool: 'leadflow' (type process), created when missing.
deployments: every deployment of prefect.yaml (the package's, or --prefect-file), updated.
automations: leadflow's ops automations (app/automations.py), created or updated in place.
"""


def _setup_arguments(command: argparse.ArgumentParser) -> None:
    command.formatter_class = argparse.RawDescriptionHelpFormatter
    command.epilog = ENVIRONMENT
    command.add_argument(
        "--overwrite", action="store_true", help="replace blocks that exist (default: keep)"
    )
    command.add_argument(
        "--prefect-file",
        help="the deployments to deploy (default: the prefect.yaml shipped in the package; "
        "copy it, edit schedules, and pass it here)",
    )
    command.add_argument(
        "--no-deploy", action="store_true", help="leave the deployments as they are"
    )
    command.add_argument("--json", action="store_true")


COMMANDS = (
    Command(
        "setup",
        cmd_setup,
        "ready this host: database, drop folders, blocks, work pool, deployments, automations",
        _setup_arguments,
    ),
)
