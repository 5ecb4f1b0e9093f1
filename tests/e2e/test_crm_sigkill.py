"""`leadflow crm sync` SIGKILLed mid-sync, then run again: every lead is one Salesforce record
holding its latest values, and nothing is left unsent.

The loopback Salesforce org runs in this process and answers each request after a delay, so
the command (a real process, with its own temporary Prefect server) is killed, with its whole
process group, after some records reached the org and before all did. The killed run's
claimed messages stay ``sending`` under its lease (``leadflow/outbox/store.py`` ``LEASE``,
two minutes on the wall clock; neither ``--now`` nor a setting shortens it): the test ends
that lease in the database, as two minutes passing would, instead of waiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from loopback.salesforce_api import SalesforceApi
from sqlalchemy import func, select, update

from leadflow import lifecycle, store
from leadflow import tables as t
from leadflow.crm import mapping as crm_mapping
from leadflow.crm import sync as crm_sync
from leadflow.crm.salesforce import SalesforceAdapter

from helpers import NOW, PG_URL, mqls

LEADS = 1500  # under the adapter's Bulk API threshold: 8 collection calls of 200 records
ACCEPTED = 25  # leads a rep accepts between the kill and the rerun
REP = "ann@reps.example"

pytestmark = [
    pytest.mark.skipif(not PG_URL, reason="LEADFLOW_TEST_DATABASE_URL not set"),
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]


@pytest.fixture(autouse=True)
def _prefect_server(no_prefect_api: None) -> None:
    """Overrides e2e/conftest.py's: the commands run here start their own temporary Prefect
    server (no PREFECT_API_URL), so this test does not wait for the session's test server."""


class CountingOrg(SalesforceApi):
    """The loopback org, counting the records it creates, per key."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.creates: Counter[str] = Counter()

    def _write(self, field: str, values: dict[str, Any], moment: str) -> dict[str, Any]:
        result = super()._write(field, values, moment)
        if result["created"]:
            self.creates[str(values[field])] += 1
        return result


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingOrg]:
    monkeypatch.setenv(crm_mapping.ENV, "salesforce")  # decisions here queue crm_sync messages
    with CountingOrg(delay_seconds=0.6) as api:
        yield api


def command_env(database_url: str, org: SalesforceApi, home: Path) -> dict[str, str]:
    """What a host running the command has: the database, the CRM turned on and its
    credentials in variables, no Prefect server (the command starts a temporary one)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEADFLOW_", "PREFECT_API", "PREFECT_SERVER_ALLOW"))
    }
    env.update(
        LEADFLOW_HOME=str(home),
        LEADFLOW_DATABASE_URL=database_url,
        LEADFLOW_CRM="salesforce",
        LEADFLOW_SALESFORCE_CLIENT_ID="cid",
        LEADFLOW_SALESFORCE_CLIENT_SECRET="secret",
        LEADFLOW_SALESFORCE_LOGIN_URL=org.url,
        LEADFLOW_SALESFORCE_CA_FILE=org.ca_file,
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def sync_process(env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "crm", "sync", "--crm", "salesforce", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes its server too
    )


def routed_leads(engine) -> list[int]:
    with engine.begin() as conn:
        conn.execute(t.reps.insert().values(email=REP, name="Ann A", code="ann", created_at=NOW))
        rep = conn.execute(select(t.reps.c.id)).scalar_one()
    ids = mqls(engine, ["US"] * LEADS)
    with engine.begin() as conn:
        conn.execute(
            t.assignments.insert(),
            [
                {
                    "lead_id": lead,
                    "rep_id": rep,
                    "rep_code": "ann",
                    "step": "rule",
                    "version": "v",
                    "reason": "rule north-america: pool na, round robin",
                    "assigned_at": NOW,
                }
                for lead in ids
            ],
        )
        changes = pd.DataFrame(
            {"id": ids, "from_status": "mql", "to_status": "routed", "owner_rep_id": rep}
        )
        lifecycle.apply(conn, changes, actor="route", at=NOW)
    return ids


def crm_messages(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.outbox.c.status, func.count())
            .where(t.outbox.c.kind == "crm_sync")
            .group_by(t.outbox.c.status)
        ).all()
    return {status: int(n) for status, n in rows}


def test_a_sync_killed_mid_run_then_rerun_writes_each_lead_once_with_its_latest_values(
    database_url: str, org: CountingOrg, tmp_path: Path
) -> None:
    engine = store.get_engine(database_url)
    ann = org.add_user(REP)
    ids = routed_leads(engine)
    queued = sum(crm_messages(engine).values())
    assert queued >= 3 * LEADS  # enriched, mql, routed: a message per lead per decision
    env = command_env(database_url, org, tmp_path)

    # The first run, killed (the whole process group) once some records are in the org.
    run = sync_process(env)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and run.poll() is None and not org.leads:
        time.sleep(0.05)
    assert run.poll() is None, f"the sync ended before the kill: {run.communicate()}"
    os.killpg(run.pid, signal.SIGKILL)
    run.communicate(timeout=10)
    assert run.returncode == -signal.SIGKILL
    time.sleep(2 * org.delay_seconds)  # a request the org had in hand is answered anyway
    reached = len(org.leads)
    assert 0 < reached < LEADS, f"{reached} of {LEADS} records reached the org before the kill"
    left = crm_messages(engine)
    assert left.get("sending", 0) > 0 and left.get("sent", 0) < queued, left

    # A new decision after the kill: a rep accepts a few leads.
    accepted = ids[:: LEADS // ACCEPTED][:ACCEPTED]
    with engine.begin() as conn:
        lifecycle.apply(
            conn,
            pd.DataFrame({"id": accepted, "from_status": "routed", "to_status": "accepted"}),
            actor="activities",
            at=NOW,
        )
    # The killed run's lease ends (two minutes on the wall clock, here at once).
    with engine.begin() as conn:
        expired = conn.execute(
            update(t.outbox)
            .where(t.outbox.c.kind == "crm_sync", t.outbox.c.status == "sending")
            .values(lease_until=store.utcnow() - pd.Timedelta(seconds=1))
        ).rowcount
    assert expired == left["sending"]

    # The rerun, to completion.
    org.delay_seconds = 0.0
    rerun = sync_process(env, "--json")
    out, err = rerun.communicate(timeout=90)
    assert rerun.returncode == 0, out + err
    report = json.loads(out)["crms"]["salesforce"]
    assert report["leads"] == LEADS and report["dead"] == 0 and report["error"] is None, report
    assert report["written"] + report["unchanged"] == LEADS, report

    # One record per lead, each created once: the killed run's upserts were updated, not
    # created again.
    assert set(org.leads) == {str(i) for i in ids}
    assert org.creates == Counter({str(i): 1 for i in ids})
    assert report["created"] == LEADS - reached

    # Each record holds the lead's latest values.
    for lead in ids:
        record = org.leads[str(lead)]
        status = "Working - Contacted" if lead in accepted else "Open - Not Contacted"
        assert record["Status"] == status, (lead, record)
        assert record["OwnerId"] == ann and record["Company"] == f"Buyer {lead}"
        assert record["Leadflow_Score__c"] == 80.0
    adapter = SalesforceAdapter(
        login_url=org.url, client_id="cid", client_secret="secret", ca_file=org.ca_file
    )
    drift = crm_sync.diff(engine, adapter, crm_mapping.load_mapping("salesforce")[0])
    assert (drift["leads"], drift["missing_in_crm"], drift["fields"]) == (LEADS, 0, {})

    # Nothing unsent: every crm_sync message is sent, none pending, failed, sending or dead.
    assert crm_messages(engine) == {"sent": queued + len(accepted)}
