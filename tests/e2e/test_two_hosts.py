"""Two hosts' worth of processes sharing only the database URL and a real Prefect server
(``prefect server start``): ``leadflow blocks init`` creates the Public Site block once (the
public URL of host B's ``serve``, a signing secret) and the SMTP block; host A runs ``leadflow
nurture`` in its own data folder, host B runs ``leadflow serve`` in another, neither with
LEADFLOW_PUBLIC_URL or LEADFLOW_UNSUBSCRIBE_SECRET. The email host A sends (received by
aiosmtpd) carries a List-Unsubscribe URL that host B honours with a one-click POST; after a
rotation the old link still works inside its window, and a link signed with a retired secret
is refused. Neither host writes a key file of its own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from app.devstack import MailSink, Stack, bin_path, free_port, prefect_server, wait_for
from leadflow import links, store
from leadflow.nurture import unsubscribe

from helpers import MONDAY, PG_URL, nurturing, rules_dir, table


@pytest.fixture
def _prefect_server() -> None:
    """This module runs its own ``prefect server start`` (not the session's test server)."""


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> dict:
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, (argv, done.returncode, done.stderr[-4000:])
    return json.loads(done.stdout)


def site_secrets(api: str) -> tuple[str, list[str]]:
    """The block's current and previous secrets, read as any host reads them."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks.site import LeadflowSite

    with temporary_settings({PREFECT_API_URL: api}):
        site = LeadflowSite.load(links.SITE_BLOCK)
    previous = [p.secret.get_secret_value() for p in site.previous_secrets]
    return site.secret.get_secret_value(), previous


def signed(base: str, lead: int, secret: str) -> str:
    return unsubscribe.link(lead, secret.encode(), base)


def test_a_link_made_on_host_a_is_honoured_by_serve_on_host_b(database_url, tmp_path):
    if PG_URL and not database_url.startswith("postgresql"):
        pytest.skip("two hosts share a server database: PostgreSQL when there is one")
    engine = store.get_engine(database_url)
    (lead,) = nurturing(engine, ["warm"], email=["ann@a.example"])
    rules = rules_dir(tmp_path)
    host_a, host_b, admin = (tmp_path / name for name in ("host-a", "host-b", "admin"))
    for folder in (host_a, host_b, admin):
        folder.mkdir()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    first_secret = f"two-hosts-{uuid.uuid4().hex}"
    with MailSink() as sink, prefect_server(tmp_path / "prefect") as stack:
        api = stack.env["PREFECT_API_URL"]
        base = {k: v for k, v in stack.env.items() if not k.startswith("LEADFLOW_")}
        env_a = base | {"LEADFLOW_HOME": str(host_a), "LEADFLOW_DATABASE_URL": database_url}
        nurture = [
            *(bin_path("leadflow"), "nurture", "--rules", rules),
            *("--now", MONDAY.isoformat(), "--notifier", "block:leadflow-smtp", "--json"),
        ]
        # Before the blocks exist: one line naming the block and the fix, nothing queued.
        refused = subprocess.run(nurture, env=env_a, cwd=host_a, capture_output=True, text=True)
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert "block named 'leadflow-site'" in refused.stderr
        assert "leadflow blocks init" in refused.stderr
        assert table(database_url, "outbox").empty
        # Once, from an admin's shell: the blocks every host reads.
        init_env = base | {
            "LEADFLOW_HOME": str(admin),
            links.URL_ENV: public,
            links.SECRET_ENV: first_secret,
            "LEADFLOW_SMTP_HOST": "127.0.0.1",
            "LEADFLOW_SMTP_PORT": str(sink.port),
            "LEADFLOW_SMTP_STARTTLS": "false",
            "LEADFLOW_SMTP_FROM": "leadflow@example.com",
        }
        made = run([bin_path("leadflow"), "blocks", "init", "--json"], init_env, admin)
        assert made["leadflow-site"].startswith("saved"), made
        assert made["leadflow-smtp"].startswith("saved"), made
        # Host B: `leadflow serve`, its own data folder, the link variables unset.
        env_b = base | {
            "LEADFLOW_HOME": str(host_b),
            "LEADFLOW_DATABASE_URL": database_url,
            links.CACHE_ENV: "1",
            "LEADFLOW_SERVE_AUTH_FAILURES_PER_MINUTE": "100",
        }
        serve = Stack(host_b, env_b)
        log = serve.start(
            "serve", [bin_path("leadflow"), "serve", "--port", str(port), "--lane", "off"]
        )
        try:
            # Host A: a nurture tick, its own data folder, the link variables unset.
            tick = run(nurture, env_a, host_a)
            assert tick["queued"] == 1, tick
            assert [m["To"] for m in sink.received] == ["ann@a.example"]
            message = sink.received[0]
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            header = " ".join(message["List-Unsubscribe"].split())  # unfolded, RFC 5322
            assert "=?" not in header, header
            url = re.fullmatch(r"<([^>]+)>", header).group(1)
            assert url == signed(public, lead, first_secret)

            wait_for(f"{public}/healthz", 120, "leadflow serve (host B)", log)
            forged = url.replace(f"lead={lead}", f"lead={lead + 1}")
            assert requests.get(forged, timeout=10).status_code == 403
            assert requests.get(url, timeout=10).status_code == 200
            one_click = requests.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10)
            assert one_click.status_code == 200, one_click.text
            events = table(database_url, "engagement_events")
            assert events.query("event_type == 'unsubscribe'")["lead_id"].tolist() == [lead]

            # Rotate, keeping the old secret for a week: both links work.
            rotate = [bin_path("leadflow"), "blocks", "rotate-secret", "--json"]
            rotated = run(
                [*rotate, "--keep-days", "7"], base | {"LEADFLOW_HOME": str(admin)}, admin
            )
            assert len(rotated["previous_secrets"]) == 1
            second, previous = site_secrets(api)
            assert previous == [first_secret] and second != first_secret
            assert requests.get(url, timeout=10).status_code == 200  # inside the window
            assert requests.get(signed(public, lead, second), timeout=10).status_code == 200

            # Rotate again, retiring the second secret at once: its links are refused.
            run([*rotate, "--keep-days", "0"], base | {"LEADFLOW_HOME": str(admin)}, admin)
            third, previous = site_secrets(api)
            assert previous == [first_secret] and third not in (first_secret, second)
            time.sleep(1.5)  # serve's cached block (LEADFLOW_SITE_CACHE_SECONDS=1) expires
            assert requests.get(signed(public, lead, second), timeout=10).status_code == 403
            assert requests.get(signed(public, lead, third), timeout=10).status_code == 200
            assert requests.get(url, timeout=10).status_code == 200  # the first: still inside
        finally:
            serve.stop()
        served = serve.log("serve")
        assert "Traceback" not in served and "links cannot be checked" not in served, served
    for folder in (host_a, host_b, admin):
        assert not list(folder.rglob("unsubscribe.key")), folder
    assert "ann@a.example" not in served
    assert os.environ.get(links.SECRET_ENV) is None
