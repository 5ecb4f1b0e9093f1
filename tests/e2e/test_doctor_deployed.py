"""End to end on one real ``prefect server start``: ``leadflow blocks init`` saves the blocks,
the command line then finds the database through the ``leadflow`` block with no
``LEADFLOW_DATABASE_*`` set (``db upgrade``, ``explain --json`` saying which database), a
process worker and the lane start, and ``leadflow doctor`` passes; with the database block
deleted and the worker stopped, it names exactly those parts and exits 1.

The SMTP server (aiosmtpd) and the public URL (``/healthz``) are loopback servers in this
process. About a minute and a half: the server, a worker, the lane, four commands."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.devstack import MailSink, bin_path, prefect_server
from leadflow import store

from helpers import ROOT, mqls, until

TOKEN = "doctor-e2e-token"


@pytest.fixture(autouse=True)
def _prefect_server(no_prefect_api: None) -> None:
    """Overrides e2e/conftest.py's: this module starts its own server, not the harness."""


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def public_site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run(argv: list[str], env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == code, f"{argv}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def _client(api: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api)


def _worker_heartbeat_age(api: str) -> float | None:
    with _client(api) as client:
        beats = [w.last_heartbeat_time for w in client.read_workers_for_work_pool("leadflow")]
    beats = [b for b in beats if b is not None]
    return (datetime.now(UTC) - max(beats)).total_seconds() if beats else None


def _lane_subscribed(api: str) -> bool:
    with _client(api) as client:
        workers = client.request("POST", "/task_workers/filter", json={}).json()
    return any(k.startswith("speed_to_lead") for w in workers for k in w["task_keys"])


def test_doctor_on_a_deployment_then_names_what_broke(tmp_path: Path, public_site: str) -> None:
    home, database = tmp_path / "home", tmp_path / "leads.db"
    url = f"sqlite:///{database}"
    with MailSink() as sink, prefect_server(tmp_path / "stack") as running:
        env = {k: v for k, v in running.env.items() if not k.startswith("LEADFLOW_")}
        env |= {
            "LEADFLOW_HOME": str(home),
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "2",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        running.env.clear()
        running.env.update(env)
        api, leadflow = env["PREFECT_API_URL"], bin_path("leadflow")
        init = env | {
            "LEADFLOW_DATABASE_URL": url,
            "LEADFLOW_CAPTURE_TOKEN": TOKEN,
            "LEADFLOW_SMTP_HOST": "127.0.0.1",
            "LEADFLOW_SMTP_PORT": str(sink.port),
            "LEADFLOW_SMTP_STARTTLS": "false",
            "LEADFLOW_PUBLIC_URL": public_site,
        }
        # setup: the database, the drop folders, the blocks, the work pool, the automations
        # (they need somewhere to notify: any URL; nothing fails here, nothing is sent)
        run([leadflow, "setup"], init | {"LEADFLOW_OPS_WEBHOOK_URL": "http://127.0.0.1:9/ops"})
        # No LEADFLOW_DATABASE_* from here on: the block is how every process finds it.
        upgraded = run([leadflow, "db", "upgrade"], env).stdout
        assert str(database) in upgraded and database.exists(), upgraded
        running.start("worker", [bin_path("prefect"), "worker", "start", "--pool", "leadflow"])
        running.start("lane", [leadflow, "lane"])
        until(lambda: _worker_heartbeat_age(api) is not None, 60, "the worker's heartbeat")
        until(lambda: _lane_subscribed(api), 90, f"the lane\n{running.log('lane')[-2000:]}")

        findings = json.loads(run([leadflow, "doctor", "--json"], env).stdout)
        by_check = {f["check"]: f for f in findings}
        assert [f for f in findings if not f["ok"]] == []
        assert {
            "prefect api", "database", "block leadflow", "block leadflow-capture-token",
            "block leadflow-smtp", "rules", "smtp leadflow-smtp", "public url",
            "drop folders", "worker leadflow", "lane", "automations", "claims", "audit",
        } <= set(by_check)  # fmt: skip
        assert not any(f["skipped"] for f in findings), findings
        assert by_check["database"]["detail"].startswith(f"{database} (from block 'leadflow')")
        assert sink.received == []  # the SMTP check sends nothing

        (lead,) = mqls(store.get_engine(url), ["US"])
        explained = run([leadflow, "explain", f"lead{lead}@buyer{lead}.com", "--json"], env)
        data = json.loads(explained.stdout)
        assert data["lead"]["id"] == lead
        assert (data["database"], data["database_source"]) == (
            str(database),
            "from block 'leadflow'",
        )

        with _client(api) as client:
            block = client.read_block_document_by_name("leadflow", "leadflow-database")
            client.delete_block_document(block.id)
        running.stop("worker")
        until(lambda: (_worker_heartbeat_age(api) or 0) > 7, 30, "the worker's heartbeat to age")
        broken = run([leadflow, "doctor"], env, code=1).stdout.splitlines()
        failed = {line.split(":")[0].removeprefix("FAIL ") for line in broken if line[:4] == "FAIL"}
        assert failed == {"database", "block leadflow", "worker leadflow"}, broken
        block_line = next(line for line in broken if line.startswith("FAIL block leadflow:"))
        assert block_line == (
            "FAIL block leadflow: not configured — fix: `LEADFLOW_DATABASE_URL=... leadflow "
            "blocks init` (the workers and the command line find the database through it)"
        )
        worker_line = next(line for line in broken if line.startswith("FAIL worker"))
        assert "no live worker (last heartbeat" in worker_line
        assert "prefect worker start --pool leadflow" in worker_line
        assert any(line.startswith("ok   lane:") for line in broken), broken
