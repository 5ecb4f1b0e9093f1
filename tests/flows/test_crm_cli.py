"""`leadflow crm` as a person runs it, against the loopback Salesforce org (real HTTPS, the
documented shapes): check, sync --dry-run, sync (the crm-sync flow), diff, and the one-line
refusals (a typo'd mapping, no credentials, no CRM enabled, a wrong client secret). No output
carries a rep's or a lead's email, or a bare "None"."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from loopback.salesforce_api import SalesforceApi
from sqlalchemy import select

from leadflow import tables as t

from helpers import NOW, add_crm_reps, copy_rules, move, mqls, route_to, run_cli, salesforce_env

EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


@pytest.fixture
def org(monkeypatch: pytest.MonkeyPatch) -> Iterator[SalesforceApi]:
    """The loopback org, its credentials in the variables a host without a Prefect server
    uses, and the sync turned on with LEADFLOW_CRM."""
    with SalesforceApi() as api:
        salesforce_env(monkeypatch, api)
        yield api


@pytest.fixture
def rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return copy_rules(tmp_path, monkeypatch)


def routed(engine, org: SalesforceApi, n: int = 3) -> list[int]:
    """``n`` leads routed to Ann, a Salesforce user (Bob is a rep, not a user)."""
    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")
    ids = mqls(engine, ["US"] * n)
    route_to(engine, ids, reps["ann@reps.example"])
    return ids


def clean(*texts: str) -> None:
    """No email address (a rep's or a lead's) and no bare None in what a person reads."""
    for text in texts:
        assert not EMAIL.findall(text.replace("\\u2026", "…")), text
        assert "None" not in text, text


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def outbox_statuses(engine) -> list[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(t.outbox.c.status).where(t.outbox.c.kind == "crm_sync"))
        return sorted({r[0] for r in rows})


def writes(org: SalesforceApi) -> list[tuple[str, str, int]]:
    """Calls that would change the org: upserts (collections or Bulk API ingest)."""
    return [c for c in org.calls if c[0] in ("PATCH", "PUT", "POST") and "/oauth2/" not in c[1]]


# --------------------------------------------------------------------------- check


def test_check_says_ok_line_by_line_and_names_what_fails(engine, org, rules, capsys) -> None:
    reps = add_crm_reps(engine)
    org.add_user("ann@reps.example")
    with engine.begin() as conn:  # only active reps count: Bob is away for now
        conn.execute(
            t.reps.update().where(t.reps.c.id == reps["bob@reps.example"]).values(active=False)
        )

    code, out, err = run_cli(capsys, "crm", "check")

    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("ok   salesforce") for line in lines), out
    assert f"{rules / 'crm' / 'salesforce.yaml'}: all 18 properties exist" in out
    assert "rep(s) are Salesforce users" in out
    clean(out, err)

    # Bob is back, and is no Salesforce user: FAIL naming him masked, exit 1.
    with engine.begin() as conn:
        conn.execute(t.reps.update().values(active=True))
    code, out, err = run_cli(capsys, "crm", "check")
    assert code == 1, out + err
    [failed] = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert "1 rep(s) are not Salesforce users: b…@reps.example" in failed
    assert str(rules / "crm" / "salesforce.yaml") in failed  # where to map him instead
    clean(out, err)

    # The mapping writes a property the org does not have: FAIL naming the file and field.
    path = rules / "crm" / "salesforce.yaml"
    path.write_text(
        path.read_text().replace("title: {to: Title,", "title: {to: Job_Title__c,"), "utf-8"
    )
    code, out, err = run_cli(capsys, "crm", "check", "--json")
    assert code == 1
    findings = strict_json(out)["crms"]["salesforce"]
    [properties] = [f for f in findings if f["what"] == "properties"]
    assert not properties["ok"]
    assert properties["line"] == f"{path}: Salesforce has no property fields.title -> Job_Title__c"
    clean(out, err)


# --------------------------------------------------------------------------- sync


def test_dry_run_json_counts_each_field_and_writes_nothing(engine, org, capsys) -> None:
    ids = routed(engine, org)

    code, out, err = run_cli(capsys, "crm", "sync", "--dry-run", "--json")

    assert code == 0, err
    plan = strict_json(out)["crms"]["salesforce"]
    assert (plan["leads"], plan["create"], plan["update"], plan["refused"]) == (3, 3, 0, 0)
    assert plan["dry_run"] is True
    fields = plan["fields"]
    assert fields["status"]["changes"] == 3 and fields["status"]["property"] == "Status"
    assert fields["owner"]["changes"] == 3 and fields["score"]["changes"] == 3
    assert fields["email"]["changes"] == 3  # shown masked in the examples
    assert {e["lead"] for e in fields["company"]["examples"]} <= set(ids)
    assert not org.leads and not writes(org)
    assert outbox_statuses(engine) == ["pending"]
    clean(out, err)

    code, out, err = run_cli(capsys, "crm", "sync", "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == (
        "salesforce: 3 lead(s) waiting: 3 to create, 0 to update, 0 unchanged, 0 refused"
    )
    assert out.strip().endswith("dry run: nothing was written")
    assert not org.leads
    clean(out, err)


def test_sync_runs_the_flow_and_the_records_reach_the_org(engine, org, capsys) -> None:
    from flows.crm import crm_sync

    ids = routed(engine, org, n=4)
    ann = next(u for u, v in org.users.items() if v["Email"] == "ann@reps.example")

    code, out, err = run_cli(capsys, "crm", "sync", "--json")

    assert code == 0, out + err
    data = strict_json(out)
    report = data["crms"]["salesforce"]
    assert (report["leads"], report["written"], report["created"], report["dead"]) == (4, 4, 4, 0)
    assert report["error"] is None and report["message"].startswith("Salesforce: 4 lead(s)")
    assert set(org.leads) == {str(i) for i in ids}
    assert all(org.leads[str(i)]["OwnerId"] == ann for i in ids)
    assert all(org.leads[str(i)]["Status"] == "Open - Not Contacted" for i in ids)
    assert outbox_statuses(engine) == ["sent"]
    clean(out, err)

    # A new decision; the flow itself (as the deployment runs it) sends one update.
    with engine.begin() as conn:
        move(conn, ids[0], "routed", "accepted", NOW)
    state = crm_sync(return_state=True)
    assert state.is_completed() and state.name == "Completed", state.message
    assert state.message.startswith("Salesforce: 1 lead(s) from 1 message(s): 1 written (0 new)")
    assert org.leads[str(ids[0])]["Status"] == "Working - Contacted" and len(org.leads) == 4

    code, out, err = run_cli(capsys, "crm", "sync")
    assert code == 0 and out.startswith("Salesforce: 0 lead(s) from 0 message(s)"), out + err
    clean(out, err)


def test_diff_shows_what_a_person_changed_in_the_org(engine, org, capsys) -> None:
    ids = routed(engine, org)
    assert run_cli(capsys, "crm", "sync")[0] == 0
    org.human_edit(str(ids[0]), Company="Buyer Holdings", Email="someone@else.example")

    code, out, err = run_cli(capsys, "crm", "diff")

    assert code == 0, err
    assert out.splitlines()[0] == (
        "salesforce: 3 lead(s) written there; 0 missing in the CRM; 2 field value(s) differ"
    )
    assert re.search(r"company\s+1 \(crm_wins\)  e\.g\. lead \d+: CRM Buyer Holdings", out)
    assert "email" in out and "s…@else.example" in out
    clean(out, err)

    code, out, err = run_cli(capsys, "crm", "diff", "--json")
    drift = strict_json(out)["crms"]["salesforce"]
    assert drift["fields"]["company"]["drifted"] == 1 and drift["missing_in_crm"] == 0
    assert set(org.leads) == {str(i) for i in ids}
    clean(out, err)


# --------------------------------------------------------------------------- refusals


def test_a_typo_in_the_mapping_is_one_line_naming_file_and_field(engine, org, rules, capsys):
    routed(engine, org)
    path = rules / "crm" / "salesforce.yaml"
    path.write_text(path.read_text().replace("  status:\n", "  statuss:\n", 1), "utf-8")

    for argv in (["sync"], ["sync", "--dry-run"], ["diff"], ["check"]):
        code, out, err = run_cli(capsys, "crm", *argv)
        assert code == 2, (argv, out, err)
        assert out == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert (
            str(path) in err and "fields: Value error, unknown leadflow field 'statuss'" in err
        ), err
        clean(out, err)
    # As the deployment runs it: a Failed run whose message is that one line.
    from flows.crm import crm_sync

    state = crm_sync(return_state=True)
    assert state.is_failed() and "\n" not in state.message, state.message
    assert state.message.startswith(f"ConfigError: {path}: fields: Value error, unknown")
    assert not org.leads and outbox_statuses(engine) == ["pending"]


def test_no_credentials_is_one_line(engine, org, monkeypatch, capsys) -> None:
    routed(engine, org)
    monkeypatch.delenv("LEADFLOW_SALESFORCE_CLIENT_ID")

    for argv in (["sync"], ["sync", "--dry-run"], ["check"]):
        code, out, err = run_cli(capsys, "crm", *argv)
        assert code == 2, (argv, out, err)
        assert out == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert "no salesforce credentials: set LEADFLOW_SALESFORCE_CLIENT_ID" in err, err
        clean(out, err)
    # The deployment's run: Failed with that line before any task ran.
    from flows.crm import crm_sync

    state = crm_sync(return_state=True)
    assert state.is_failed() and "\n" not in state.message, state.message
    assert state.message.startswith("MissingBlock: no salesforce credentials"), state.message
    assert not org.leads and outbox_statuses(engine) == ["pending"]


def test_no_crm_enabled(engine, monkeypatch, capsys) -> None:
    from flows.crm import crm_sync

    monkeypatch.setenv("LEADFLOW_CRM", "none")

    code, out, err = run_cli(capsys, "crm", "sync")

    assert code == 2 and out == "", out + err
    assert err.strip().splitlines() == [
        "leadflow: no CRM enabled: set enabled: true in rules/crm/hubspot.yaml or "
        "salesforce.yaml, set LEADFLOW_CRM=hubspot, or name one with --crm"
    ]
    # The flow on a schedule left on: green, saying why it did nothing.
    state = crm_sync(return_state=True)
    assert state.is_completed(), state.message
    assert state.message.startswith("no CRM enabled")


def test_a_wrong_client_secret_fails_the_flow_and_the_messages_wait(
    engine, org, monkeypatch, capsys
) -> None:
    from flows.crm import crm_sync

    routed(engine, org)
    monkeypatch.setenv("LEADFLOW_SALESFORCE_CLIENT_SECRET", "rotated")

    state = crm_sync(return_state=True)

    assert state.is_failed(), state.message
    assert "invalid client credentials" in state.message.lower(), state.message
    assert not org.leads
    assert outbox_statuses(engine) == ["pending"]  # put back untried, not failed

    # Put back for 5 minutes (a person fixes the secret); a run after that is refused again.
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    code, out, err = run_cli(capsys, "crm", "sync", "--now", later)
    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1 and "invalid client credentials" in err.lower()
    clean(out, err)

    code, out, err = run_cli(capsys, "outbox", "list", "--kind", "crm_sync")
    assert code == 0
    assert "9 pending" in out.splitlines()[0], out
    waiting = [line for line in out.splitlines() if " crm_sync " in line and "pending" in line]
    assert waiting and all("invalid client credentials" in line.lower() for line in waiting[1:])
    clean(out, err)

    # The UI shows why they wait: the run's table artifact, with the reason and its count.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    [table] = [a for a in artifacts if a.key == "crm-sync-salesforce"]
    assert "9 message(s) waiting" in table.description
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    reasons = [r for r in rows if r["what"].startswith("pending: ")]
    assert reasons and reasons[0]["count"] == 9 and "invalid client" in reasons[0]["what"].lower()
