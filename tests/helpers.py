"""Helpers shared by the test modules of several tiers (tests/unit, tests/store, tests/flows,
tests/e2e): files, flows run the way tests run them, tables read back, the ledger checked,
and the data and rules that tests of one subject share across tiers. Test modules import
from here (``pythonpath = ["tests"]``), never from each other or from conftest."""

from __future__ import annotations

import email
import os
import shutil
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from leadflow import audit, lifecycle, store
from leadflow import tables as t

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]  # the checkout: rules/, suites/, prefect.yaml
PG_URL = os.environ.get("LEADFLOW_TEST_DATABASE_URL")


def _postgres_schema_url(schema: str) -> str:
    url = make_url(PG_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def ingest(path: Any, source: str = "test", mapping: Any = None, **kwargs: Any) -> tuple[Any, dict]:
    from flows.capture import capture

    state = capture(
        str(path),
        source=source,
        mapping_path=str(mapping) if mapping else None,
        return_state=True,
        **kwargs,
    )
    data = state.result(raise_on_failure=False)
    return state, data if isinstance(data, dict) else {"error": data}


def table(url: str, name: str) -> pd.DataFrame:
    """All rows of a table, in primary-key order."""
    tbl = getattr(t, name)
    with store.get_engine(url).connect() as conn:
        return store.read_frame(conn, select(tbl).order_by(*tbl.primary_key.columns))


def assert_ledger_ok(url: str) -> dict:
    with store.get_engine(url).connect() as conn:
        report = audit.run_audit(conn)
    assert report.ok, report.problems
    return report.as_dict()


def until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something true (returned), or fail naming ``what``:
    for tests that wait on real processes (a deployed stack, a server, a worker)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """The command line in this process: its exit code, stdout and stderr."""
    from app import cli

    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -------------------------- routing (tests of route, SLA, recycling, activities, outbox)

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)  # a Monday, 10:00 in New York


RULES = """
name: test-routing
account_owner: true
pools:
  - {name: na}
  - {name: emea}
rules:
  - {name: north-america, when: {field: country, in: [US, CA]}, pool: na}
  - {name: europe, when: {field: country, in: [DE, FR, GB]}, pool: emea}
fallback: {queue: sales-ops, owner: olga}
reps:
  - {id: ann, name: Ann A, email: ann@reps.example, pools: [na], weight: 2, timezone: America/New_York, capacity: {max_open: CAP}}
  - {id: bob, name: Bob B, email: bob@reps.example, pools: [na], weight: 1, timezone: America/Chicago, capacity: {max_open: CAP}}
  - {id: cem, name: Cem C, email: cem@reps.example, pools: [emea], timezone: Europe/Berlin}
  - {id: olga, name: Olga O, email: olga@reps.example, pools: [], timezone: UTC}
"""


def rules_file(tmp_path: Path, capacity: int | None = None, name: str = "routing.yaml") -> Path:
    return write(
        tmp_path / name, RULES.replace("CAP", "null" if capacity is None else str(capacity))
    )


def mqls(engine, countries: list[str], temperature: str = "warm") -> list[int]:
    """Leads that reached ``mql`` through the lifecycle (captured -> enriched -> mql)."""
    with engine.begin() as conn:
        ids = store.allocate_ids(conn, t.leads, len(countries))
        rows = pd.DataFrame(
            {
                "id": ids,
                "email": [f"lead{i}@buyer{i}.com" for i in ids],
                "first_name": "Lee",
                "company": [f"Buyer {i}" for i in ids],
                "country": countries,
                "captured_at": pd.Timestamp(NOW),
                "last_seen_at": pd.Timestamp(NOW),
                "updated_at": pd.Timestamp(NOW),
            }
        )
        lifecycle.admit(conn, rows, actor="test", at=NOW)
        for source, target in (("captured", "enriched"), ("enriched", "mql")):
            changes = pd.DataFrame({"id": ids, "from_status": source, "to_status": target})
            if target == "mql":
                changes["temperature"] = temperature
                changes["score"] = 80.0
            lifecycle.apply(conn, changes, actor="test", at=NOW)
    return [int(i) for i in ids]


def run_route(database_url: str, tmp_path: Path, **kwargs) -> dict:
    from flows.route import route

    if "rules" not in kwargs:  # not setdefault: that would rewrite the file it was given
        kwargs["rules"] = str(rules_file(tmp_path))
    kwargs.setdefault("notifier", f"maildir:{tmp_path / 'mail'}")
    state = route(now=NOW, database_url=database_url, return_state=True, **kwargs)
    assert state.is_completed(), state.message
    return state.result()


# ----------------------------------------------------------------------------------- SLA

ROUTING = (
    RULES.replace("CAP", "null")
    .replace("email: ann@reps.example,", "email: ann@reps.example, manager: olga,")
    .replace("email: bob@reps.example,", "email: bob@reps.example, manager: olga,")
)


POLICIES = """
name: test-sla
warn_at: 0.8
policies:
  - name: hot-first-touch
    when: {field: temperature, equals: hot}
    met_by: [call, email, meeting_booked, accept]
    within: 15m
    escalate_after: 1h
  - name: acceptance
    met_by: [accept, reject]
    within: 2d
"""


def files(tmp_path: Path) -> tuple[str, str]:
    return (
        str(write(tmp_path / "routing.yaml", ROUTING)),
        str(write(tmp_path / "sla.yaml", POLICIES)),
    )


def check(database_url: str, tmp_path: Path, now: datetime) -> dict:
    from flows.sla import sla as sla_flow

    routing, policies = files(tmp_path)
    state = sla_flow(
        now=now,
        database_url=database_url,
        rules=policies,
        routing=routing,
        notifier=f"maildir:{tmp_path / 'mail'}",
        return_state=True,
    )
    assert state.is_completed(), state.message
    return state.result()


def routed_hot_leads(database_url: str, tmp_path: Path, n: int) -> list[int]:
    ids = mqls(store.get_engine(database_url), ["US"] * n, temperature="hot")
    routing, _ = files(tmp_path)
    run_route(database_url, tmp_path, rules=routing)
    return ids


def owners(database_url: str) -> dict[int, str]:
    leads = table(database_url, "leads")
    reps = table(database_url, "reps").set_index("id")["code"]
    return {int(i): reps[int(o)] for i, o in zip(leads["id"], leads["owner_rep_id"], strict=True)}


# ----------------------------------------------------------------------------- recycling

RECYCLE_POLICY = """
name: test-recycle
routed_not_accepted: 5d
no_activity: {accepted: 14d, qualified: 30d}
dispositions: [not_now, no_response]
lost_reasons: [timing, budget]
owner: release
cooldown: 90d
score: {action: decay, factor: 0.5}
max_recycles: 3
after_max: disqualify
max_in_status: {mql: 4h, routed: 6d}
"""


def move(conn, lead: int, source: str, target: str, at, **fields) -> None:
    lifecycle.apply(
        conn,
        pd.DataFrame({"id": [lead], "from_status": source, "to_status": target, **fields}),
        actor="test",
        at=at,
    )


# ------------------------------------------ owner notices (aiosmtpd handler, free ports)

NOTIFY_NOW = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)  # Tuesday


class Inbox:
    """An SMTP handler that keeps what it receives and refuses addresses starting 'nobody'."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def routed_messages() -> tuple[pd.DataFrame, pd.DataFrame]:
    from leadflow.routing import notices as notify
    from leadflow.routing.decide import empty_state, route_leads
    from leadflow.routing.rules import load_rules

    rules, version, _ = load_rules(ROOT / "rules" / "routing.yaml")
    leads = pd.DataFrame(
        {
            "id": [1, 2],
            "first_name": ["Ada", "Bo"],
            "last_name": ["Lovelace", "Chen"],
            "company": ["Analytical Engines", "Bo Ltd"],
            "email": ["ada@engines.example", "bo@bo.example"],
            "country": ["DE", "DE"],
            "region": ["EMEA", "EMEA"],
            "temperature": ["hot", "cold"],
            "score": [91.5, 20.0],
        }
    )
    result = route_leads(leads, rules, empty_state(), NOTIFY_NOW, version=version)
    return result.assignments, notify.owner_messages(result.assignments, leads, rules, NOTIFY_NOW)


# ------------------------------------------------------------------------------- nurture

MONDAY = datetime(2026, 11, 2, 10, tzinfo=UTC)  # 10:00 UTC, Monday


CADENCES = """
name: test-nurture
default_timezone: UTC
quiet_hours: {start: "19:00", end: "08:00"}
weekends: false
max_touches_per_week: 5
suppression_list: suppression.txt
on_change: ON_CHANGE
cadences:
  - name: warm
    entry: {field: temperature, equals: warm}
    reentry: never
    steps:
      - {name: hello, delay: 0d, subject: "Hi {{ first_name or 'there' }}", template: hello.txt}
      - {name: proof, delay: 2d, subject: "Proof for {{ company }}", template: proof.txt}
      - name: call-task
        delay: 1d
        channel: rep_task
        subject: "Call lead {{ lead_id }}"
        assignee: sdr@reps.example
        template: task.txt
    on_finish: {then: cadence, cadence: later}
  - name: cold
    entry: {field: temperature, equals: cold}
    steps:
      - {name: guide, delay: 1d, subject: Guide, template: hello.txt}
    on_finish: {then: disqualify}
  - name: later
    steps:
      - {name: monthly, delay: 30d, subject: Monthly, template: hello.txt}
    on_finish: {then: disqualify}
"""


def rules_dir(tmp_path: Path, on_change: str = "keep", text: str = CADENCES) -> str:
    folder = tmp_path / "rules"
    write(
        folder / "templates" / "hello.txt",
        "Hello {{ first_name }}.\nUnsubscribe: {{ unsubscribe_url }}\n",
    )
    write(folder / "templates" / "proof.txt", "Proof for {{ company }}.\n")
    write(folder / "templates" / "task.txt", "Call {{ first_name }} at {{ company }}.\n")
    write(folder / "suppression.txt", "# sales' list\n@rival.example\nceo@listed.example\n")
    return str(write(folder / "cadences.yaml", text.replace("ON_CHANGE", on_change)))


def nurturing(engine, temperatures: list[str], **columns) -> list[int]:
    """Leads that reached ``nurturing`` through the lifecycle (captured -> enriched ->
    nurturing), with ``columns`` set on them (lists, one value per lead)."""
    with engine.begin() as conn:
        ids = store.allocate_ids(conn, t.leads, len(temperatures))
        rows = pd.DataFrame(
            {
                "id": ids,
                "email": [f"lead{i}@buyer{i}.example" for i in ids],
                "first_name": "Lee",
                "company": [f"Buyer {i}" for i in ids],
                "country": "US",
                "captured_at": pd.Timestamp(MONDAY),
                "last_seen_at": pd.Timestamp(MONDAY),
                "updated_at": pd.Timestamp(MONDAY),
            }
        )
        for name, values in columns.items():
            if name in rows.columns:
                rows[name] = values
        lifecycle.admit(conn, rows, actor="test", at=MONDAY)
        for source, target in (("captured", "enriched"), ("enriched", "nurturing")):
            changes = pd.DataFrame({"id": ids, "from_status": source, "to_status": target})
            if target == "nurturing":
                changes["temperature"] = temperatures
                changes["score"] = 40.0
                for name, values in columns.items():
                    if name not in rows.columns:
                        changes[name] = values
            lifecycle.apply(conn, changes, actor="test", at=MONDAY)
    return [int(i) for i in ids]


def tick(database_url: str, rules: str, now: datetime, **kwargs) -> dict:
    from flows.nurture import nurture

    state = nurture(now=now, database_url=database_url, rules=rules, return_state=True, **kwargs)
    data = state.result(raise_on_failure=False)
    assert state.is_completed(), state.message
    return data


# ------------------------------------------------- capture: personal data and exit codes

HEADER = "email,first_name,last_name,company,title,phone,country,website,source,created_at\n"


def batches(url: str) -> pd.DataFrame:
    return table(url, "capture_batches")


EMAILS = ["ann.secret@example.com", "bob.hidden@example.org", "carol.private@example.net"]


PHONES = ["+1 415 555 0123", "+44 20 7946 0958", "+49 30 901820"]


def bad_files(tmp_path) -> list:
    """Files that go wrong in different ways, all of them full of personal data."""
    rows = "".join(
        f"{email},Name {i},{phone}\n"
        for i, (email, phone) in enumerate(zip(EMAILS, PHONES, strict=True))
    )
    garbage = bytes(range(256)) + "\n".join(EMAILS + PHONES).encode() + b"\x00\x1b[31m\x07"
    return [
        write(tmp_path / "headerless.csv", rows),
        write(tmp_path / "garbage.csv", garbage),
        write(tmp_path / "semicolons.csv", "email;name;phone\n" + rows.replace(",", ";")),
        write(tmp_path / "bad_rows.csv", "email,name,phone\n" + rows.replace("@", "@@")),
        write(
            tmp_path / "latin.csv", ("email,name,phone\n" + rows).encode() + b"x@y.com,Jos\xe9,1\n"
        ),
        write(
            tmp_path / "json.jsonl",
            "\n".join(
                f'{{"mail": "{e}", "tel": "{p}"}}' for e, p in zip(EMAILS, PHONES, strict=True)
            ),
        ),
    ]


def personal_data_in(text: str) -> list[str]:
    digits = "".join(ch for ch in text if ch.isdigit())
    found = [e for e in EMAILS if e in text or e.split("@")[0] in text]
    found += [p for p in PHONES if p in text or "".join(c for c in p if c.isdigit()) in digits]
    return found


# --------------------------------------- the speed-to-lead lane (POST /leads in process)

MAPPING = str(ROOT / "rules" / "sources" / "web_form.yaml")


TOKEN = "test-capture-token"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


HOT = {
    "first_name": "Ann",
    "company": "Acme Corp",
    "title": "VP Sales",
    "country": "US",
    "source": "referral",
    "lead_form": "demo_request",
    "timeline": "0-3 months",
}


def app_for(database_url: str, handed: list[list[int]] | None = None) -> TestClient:
    from fastapi.testclient import TestClient

    from app.web import Capture, create_app

    capture = Capture(
        token=TOKEN,
        mapping_path=MAPPING,
        hand_off=(lambda ids: handed.append(ids)) if handed is not None else None,
        emit_events=False,
    )
    return TestClient(create_app(database_url, capture))


def count(engine, table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# ----------------------------------------------------------------------- the claim queue

QUEUE_NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def admit(engine, n: int) -> list[int]:
    with engine.begin() as conn:
        ids = store.allocate_ids(conn, t.leads, n)
        rows = pd.DataFrame(
            {
                "id": ids,
                "email": [f"u{i}@acme{i % 7}.com" for i in ids],
                "country": "US",
                "captured_at": pd.Timestamp(QUEUE_NOW),
                "last_seen_at": pd.Timestamp(QUEUE_NOW),
                "updated_at": pd.Timestamp(QUEUE_NOW),
            }
        )
        lifecycle.admit(conn, rows, actor="test", at=QUEUE_NOW)
    return [int(i) for i in ids]


def claimed(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.leads.c.claimed_by, func.count())
            .where(t.leads.c.claimed_by.is_not(None))
            .group_by(t.leads.c.claimed_by)
        ).all()
    return dict(rows)


# ------------------------------ rules checked first (a broken copy of the shipped rules)


def _replace(old: str, new: str, file: str) -> Callable[[Path], None]:
    def breaks(folder: Path) -> None:
        path = folder / file
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{file} no longer has {old!r}: update the test"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return breaks


def _remove(file: str) -> Callable[[Path], None]:
    return lambda folder: (folder / file).unlink()


# How each rules file is broken, and what the one line must name (file, field or value).
BREAKS: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "routing-typo-key": (
        _replace("\nfallback:", "\nfallbak:", "routing.yaml"),
        ("routing.yaml: ", "fallbak: Extra inputs are not permitted"),
    ),
    "routing-pool-without-rep": (
        _replace("  - name: latam\n", "  - name: latam\n  - name: nordics\n", "routing.yaml"),
        ("routing.yaml: ", "pools[nordics]: no rep is in this pool"),
    ),
    "scoring-typo-key": (
        _replace("points: 20", "pointz: 20", "scoring.yaml"),
        ("scoring.yaml: ", "fit[0].pointz: Extra inputs are not permitted (value: 20)"),
    ),
    "routing-missing": (_remove("routing.yaml"), ("routing.yaml: file not found",)),
}


def snapshot(url: str) -> dict[str, Any]:
    """Every table's row count, and each lead's status."""
    with store.get_engine(url).connect() as conn:
        counts = {
            name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for name, table in t.metadata.tables.items()
        }
        statuses = conn.execute(select(t.leads.c.id, t.leads.c.status).order_by(t.leads.c.id)).all()
    return {"rows": counts, "statuses": [tuple(row) for row in statuses]}


def assert_nothing_moved(url: str, before: dict[str, Any]) -> None:
    after = snapshot(url)
    assert {status for _, status in after["statuses"]} == {"captured"}
    assert after["rows"]["lead_events"] == before["rows"]["lead_events"]  # no ledger row
    assert after == before


def copy_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shipped rules, used by every run of the test (LEADFLOW_RULES_DIR)."""
    folder = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", folder)
    monkeypatch.setenv("LEADFLOW_RULES_DIR", str(folder))
    return folder


def captured_leads(database_url: str, tmp_path: Path) -> str:
    """Leads waiting in ``captured``: what a run would move first."""
    rows = "".join(
        f"p{n}@company{n % 4}.com,P{n},Lead,Company {n % 4},{('US', 'DE', 'JP')[n % 3]}\n"
        for n in range(24)
    )
    path = write(tmp_path / "leads.csv", "email,first_name,last_name,company,country\n" + rows)
    state, data = ingest(path, source="web")
    assert state.is_completed() and data["inserted"] == 24, data
    return database_url


# ------------------------------------------------------------------------------ CRM sync

CRM_REPS = ("ann@reps.example", "bob@reps.example")


def add_crm_reps(engine) -> dict[str, int]:
    """Ann and Bob as reps (whether they are CRM users is the test's to say): email -> id."""
    with engine.begin() as conn:
        for email in CRM_REPS:
            name = email.split("@")[0]
            conn.execute(
                t.reps.insert().values(email=email, name=name.title(), code=name, created_at=NOW)
            )
        rows = conn.execute(select(t.reps.c.email, t.reps.c.id)).all()
    return {email: int(rep_id) for email, rep_id in rows}


def route_to(engine, ids: list[int], rep_id: int) -> None:
    """MQLs routed to a rep through the lifecycle (an assignment, then mql -> routed): each
    decision queues its crm_sync messages as routing's would."""
    with engine.begin() as conn:
        for lead in ids:
            conn.execute(
                t.assignments.insert().values(
                    lead_id=lead,
                    rep_id=rep_id,
                    rep_code="x",
                    step="rule",
                    version="v",
                    reason="rule north-america: pool na, round robin",
                    assigned_at=NOW,
                )
            )
        lifecycle.apply(
            conn,
            pd.DataFrame(
                {"id": ids, "from_status": "mql", "to_status": "routed", "owner_rep_id": rep_id}
            ),
            actor="route",
            at=NOW,
        )


def salesforce_env(monkeypatch: pytest.MonkeyPatch, api: Any) -> None:
    """The loopback org's credentials in the variables a host without a Prefect server uses,
    and the sync turned on (LEADFLOW_CRM)."""
    monkeypatch.setenv("LEADFLOW_CRM", "salesforce")
    monkeypatch.setenv("LEADFLOW_SALESFORCE_LOGIN_URL", api.url)
    monkeypatch.setenv("LEADFLOW_SALESFORCE_CLIENT_ID", api.client_id)
    monkeypatch.setenv("LEADFLOW_SALESFORCE_CLIENT_SECRET", api.client_secret)
    monkeypatch.setenv("LEADFLOW_SALESFORCE_CA_FILE", api.ca_file)
