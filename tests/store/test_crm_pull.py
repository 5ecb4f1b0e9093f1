"""The CRM pull (``leadflow/crm/pull.py``) against the loopback HubSpot API through the real
adapter: a status a person sets in HubSpot is a sales activity captured like a file's (the
lead moves, the ledger has it, the SLA meets it), the same record read twice counts once, an
owner set in HubSpot reassigns the lead as routing would, and the cursor moves on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from loopback.hubspot_api import STANDARD, HubSpotApi
from sqlalchemy import delete, select, update

from leadflow import audit, store
from leadflow import runner as hops
from leadflow import tables as t
from leadflow.crm import store as crm_store
from leadflow.crm.base import Record
from leadflow.crm.hubspot import HubSpotAdapter
from leadflow.crm.mapping import CrmMapping, Inbound, load_mapping
from leadflow.crm.pull import chunks, lead_id_of, pull
from leadflow.routing import hop as route_hop
from leadflow.sla import check as sla
from tasks import routing as routing_tasks
from tasks import sla as sla_tasks

from helpers import POLICIES, ROOT, ROUTING, copy_rules, mqls, table, write

REPS = ("ann", "bob", "cem", "olga")


@dataclass
class World:
    url: str
    engine: object
    api: HubSpotApi
    adapter: HubSpotAdapter
    mapping: CrmMapping
    owner_ids: dict[str, str]  # rep code -> HubSpot owner id
    route: route_hop.RouteContext
    sla: sla.SlaContext
    routed_at: datetime


@pytest.fixture
def world(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    copy_rules(tmp_path, monkeypatch)  # the activities capture reads rules/sla.yaml (reject)
    routing = str(write(tmp_path / "routing.yaml", ROUTING))
    policies = str(write(tmp_path / "sla.yaml", POLICIES))
    mapping, _ = load_mapping("hubspot", ROOT / "rules" / "crm" / "hubspot.yaml")
    with HubSpotApi(token="pat-test") as api:
        for name in mapping.properties():
            if name not in STANDARD and name != mapping.id_property:  # leadflow's own
                api.add_property(name)
        owner_ids = {code: api.add_owner(f"{code}@reps.example", code.title()) for code in REPS}
        yield World(
            url=database_url,
            engine=store.get_engine(database_url),
            api=api,
            adapter=HubSpotAdapter(access_token="pat-test", base_url=api.url),
            mapping=mapping,
            owner_ids=owner_ids,
            route=routing_tasks.load_context.fn(routing),
            sla=sla_tasks.load_context.fn(policies, routing),
            # Routed a little before now: HubSpot stamps a person's edits with the wall clock.
            routed_at=datetime.now(UTC) - timedelta(minutes=10),
        )


def routed(w: World, n: int) -> list[int]:
    """``n`` hot US leads routed (to ann or bob) at ``routed_at``, their SLA clocks started,
    and pushed to HubSpot as the sync writes them (status and owner; ``crm_records``)."""
    ids = mqls(w.engine, ["US"] * n, temperature="hot")
    after = 0
    while outcome := hops.run_batch(route_hop.HOP, w.route, w.engine, now=w.routed_at, after=after):
        after = outcome.next_after
    run_sla(w, w.routed_at)
    codes = owners(w)
    records = [
        Record(i, str(i), {"hs_lead_status": "NEW", "hubspot_owner_id": w.owner_ids[codes[i]]})
        for i in ids
    ]
    outcomes = w.adapter.upsert(records)
    assert all(o.ok for o in outcomes), outcomes
    with w.engine.begin() as conn:
        crm_store.save_pushed(
            conn,
            "hubspot",
            [
                {"lead_id": o.lead_id, "crm_id": o.crm_id, "pushed": r.properties}
                for o, r in zip(outcomes, records, strict=True)
            ],
            datetime.now(UTC),
        )
    return ids


def run_sla(w: World, now: datetime) -> sla.CheckResult:
    with w.engine.begin() as conn:
        return sla.check(conn, w.sla, now)


def owners(w: World) -> dict[int, str]:
    leads = table(w.url, "leads")
    codes = table(w.url, "reps").set_index("id")["code"]
    return {
        int(i): codes[int(o)]
        for i, o in zip(leads["id"], leads["owner_rep_id"], strict=True)
        if pd.notna(o)
    }


def status_of(w: World, lead: int) -> str:
    with w.engine.connect() as conn:
        return conn.execute(select(t.leads.c.status).where(t.leads.c.id == lead)).scalar_one()


def ledger_ok(w: World) -> None:
    """The audit finds nothing wrong (the test's leads were admitted without a capture batch,
    which it says, and nothing else)."""
    with w.engine.connect() as conn:
        problems = audit.run_audit(conn).problems
    assert [p for p in problems if "leads stored but lead batches inserted" not in p] == []


def events(w: World, lead: int, kind: str) -> pd.DataFrame:
    ledger = table(w.url, "lead_events")
    return ledger[(ledger["lead_id"] == lead) & (ledger["kind"] == kind)]


# --------------------------------------------------------------------------- tests


def test_accept_set_in_hubspot_accepts_the_lead_once_and_meets_its_sla(world: World, caplog):
    w = world
    [lead] = routed(w, 1)
    rep = owners(w)[lead]
    edit = w.api.human_edit(str(lead), hs_lead_status="OPEN")
    caplog.set_level(logging.DEBUG, logger="leadflow.crm.pull")

    report = pull(w.engine, w.adapter, w.mapping)

    assert report.read == 1 and report.known == 1 and report.status_changes == 1
    assert (report.captured, report.already, report.quarantined) == (1, 0, 0)
    assert report.decisions == {"accepted": 1} and report.cursor_before is None
    assert report.cursor_after == edit["lastmodifieddate"]
    assert status_of(w, lead) == "accepted"
    [moved] = events(w, lead, "transition").query("to_status == 'accepted'").to_dict("records")
    assert moved["from_status"] == "routed" and moved["actor"] == "activities"
    assert moved["reason"] == "accept: set to OPEN in HubSpot"
    [activity] = table(w.url, "activities").to_dict("records")
    assert activity["source"] == "hubspot" and activity["activity_type"] == "accept"
    crm_id = edit["hs_object_id"]
    key = f"id:hubspot:{crm_id}:status:OPEN:{edit['lastmodifieddate']}"
    assert activity["activity_key"] == key
    assert activity["rep_id"] == table(w.url, "reps").set_index("code").loc[rep, "id"]
    batch = table(w.url, "capture_batches").iloc[-1]
    assert (batch["kind"], batch["source"], batch["target"], batch["status"]) == (
        "http",
        "hubspot",
        "activities",
        "complete",
    )
    # The next SLA check meets the lead's clocks with the accept (both policies count it).
    run_sla(w, datetime.now(UTC))
    timers = table(w.url, "sla_timers")
    timers = timers[timers["lead_id"] == lead]
    assert set(timers["policy"]) == {"hot-first-touch", "acceptance"}
    assert timers["met_at"].notna().all() and set(timers["closed_reason"]) == {"met"}

    # Nothing edited since: the last minutes are read again (a change a CRM shows late is
    # not lost), and what was read before is no change.
    again = pull(w.engine, w.adapter, w.mapping)
    assert again.read == again.unchanged == 1 and again.status_changes == again.captured == 0
    assert again.cursor_before == again.cursor_after == report.cursor_after

    # The same record read again (the cursor lost) is no change: what the last pull read.
    with w.engine.begin() as conn:
        conn.execute(delete(t.source_cursors).where(t.source_cursors.c.source == "crm:hubspot"))
    replay = pull(w.engine, w.adapter, w.mapping)
    assert replay.read == 1 and replay.unchanged == 1 and replay.status_changes == 0

    # A crash after the capture and before the pull kept what it read: the activity's key
    # makes the second capture the same activity (another record in the chunk this time).
    later = w.mapping.model_copy(
        update={"inbound": Inbound(status={**w.mapping.inbound.status, "CALL_LATER": "not_now"})}
    )
    [other] = routed(w, 1)
    w.api.human_edit(str(other), hs_lead_status="CALL_LATER")
    first = pull(w.engine, w.adapter, later)
    # (the earlier record is read again within the overlap: no change)
    assert (first.read, first.status_changes, first.captured) == (2, 1, 1)
    with w.engine.begin() as conn:  # read again: what the last pull read is no change
        conn.execute(delete(t.source_cursors).where(t.source_cursors.c.source == "crm:hubspot"))
    second = pull(w.engine, w.adapter, later)
    assert (second.read, second.unchanged, second.status_changes) == (2, 2, 0)
    w.api.human_edit(str(lead), firstname="Lee")  # not a status: no change of ours
    with w.engine.begin() as conn:
        conn.execute(delete(t.source_cursors).where(t.source_cursors.c.source == "crm:hubspot"))
        conn.execute(update(t.crm_records).values(pulled=None))
    crashed = pull(w.engine, w.adapter, later)
    assert crashed.read == 2 and crashed.status_changes == 1 and crashed.unchanged == 1
    assert (crashed.captured, crashed.already) == (0, 1)
    assert table(w.url, "activities")["activity_type"].tolist() == ["accept", "not_now"]
    assert len(events(w, lead, "transition").query("to_status == 'accepted'")) == 1
    ledger_ok(w)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "HubSpot: 1 record(s) read" in logged and "@reps.example" not in logged
    assert "@buyer" not in logged


def test_an_owner_set_in_hubspot_reassigns_the_lead_and_its_sla(world: World):
    w = world
    lead, stray = routed(w, 2)
    before = owners(w)
    was = before[lead]
    new = "bob" if was == "ann" else "ann"
    w.api.add_owner("someone@agency.example", "Some", "One")
    stranger = w.api.add_owner("stranger@agency.example", "Stran", "Ger")
    w.api.human_edit(str(lead), hubspot_owner_id=w.owner_ids[new])
    w.api.human_edit(str(stray), hubspot_owner_id=stranger)
    w.api.human_edit("999999", hs_lead_status="OPEN")  # no such lead
    w.api.human_edit("not-a-lead", hs_lead_status="OPEN")  # not leadflow's id

    report = pull(w.engine, w.adapter, w.mapping, page_records=2)

    assert report.read == 4 and report.known == 2
    assert report.owner_changes == 1 and report.reassigned == 1
    assert report.ignored == {"owner not a rep": 1, "lead unknown": 1, "not a leadflow lead": 1}
    assert "ignored 3" in report.describe() and "1 owner not a rep" in report.describe()
    assert owners(w)[lead] == new and owners(w)[stray] == before[stray]
    held = table(w.url, "assignments")
    held = held[held["lead_id"] == lead].sort_values("id")
    old, fresh = held.to_dict("records")
    assert (
        old["rep_code"] == was and old["released_reason"] == "owner changed in HubSpot by a person"
    )
    assert fresh["rep_code"] == new and pd.isna(fresh["released_at"])
    assert (fresh["step"], fresh["version"], fresh["reason"]) == (
        "crm",
        "crm:hubspot",
        "owner set in HubSpot",
    )
    assert fresh["assigned_at"] == old["released_at"]
    [ledger] = events(w, lead, "reassignment").to_dict("records")
    assert ledger["actor"] == "crm:hubspot" and ledger["to_status"] == "routed"
    assert ledger["reason"] == f"owner changed in HubSpot by a person: {was} -> {new}"
    assert events(w, stray, "reassignment").empty

    # The SLA check closes the old owner's clocks and starts the new owner's.
    run_sla(w, datetime.now(UTC))
    timers = table(w.url, "sla_timers")
    timers = timers[timers["lead_id"] == lead]
    reps = table(w.url, "reps").set_index("code")["id"]
    closed = timers[timers["rep_id"] == reps[was]]
    opened = timers[timers["rep_id"] == reps[new]]
    assert set(closed["closed_reason"]) == {"reassigned"} and len(closed) == 2
    assert len(opened) == 2 and opened["closed_at"].isna().all()

    # Read again from the start: the same owner values are no change.
    with w.engine.begin() as conn:
        conn.execute(delete(t.source_cursors).where(t.source_cursors.c.source == "crm:hubspot"))
    replay = pull(w.engine, w.adapter, w.mapping)
    assert replay.reassigned == 0 and replay.unchanged == 2
    assert len(events(w, lead, "reassignment")) == 1
    ledger_ok(w)


def test_lost_set_in_hubspot_without_a_reason_is_recorded_with_one(world: World):
    w = world
    [lead] = routed(w, 1)
    for value in ("OPEN", "IN_PROGRESS", "UNQUALIFIED"):
        w.api.human_edit(str(lead), hs_lead_status=value)
        report = pull(w.engine, w.adapter, w.mapping)
        assert report.captured == 1 and report.quarantined == 0, report.describe()
    assert status_of(w, lead) == "lost"
    lost = table(w.url, "activities").query("activity_type == 'lost'")
    assert lost["reason"].tolist() == ["set to UNQUALIFIED in HubSpot"]
    [moved] = events(w, lead, "transition").query("to_status == 'lost'").to_dict("records")
    assert moved["reason"] == "lost: set to UNQUALIFIED in HubSpot"
    leads = table(w.url, "leads").set_index("id")
    assert leads.loc[lead, "outcome"] == "lost"
    ledger_ok(w)


def test_a_status_the_lifecycle_does_not_allow_is_quarantined_with_its_reason(world: World):
    w = world
    [lead] = routed(w, 1)
    w.api.human_edit(str(lead), hs_lead_status="CONNECTED")  # won, from routed
    report = pull(w.engine, w.adapter, w.mapping)
    assert (report.status_changes, report.captured, report.quarantined) == (1, 0, 1)
    assert status_of(w, lead) == "routed"
    [held] = table(w.url, "quarantine").to_dict("records")
    assert "won" in str(held["reasons"])
    ledger_ok(w)


def test_chunks_never_split_records_that_share_a_cursor():
    items = [({"n": i}, c) for i, c in enumerate("aabbbcd")]
    assert [[r["n"] for r, _ in c] for c in chunks(items, 2, None)] == [
        [0, 1],
        [2, 3, 4],
        [5, 6],
    ]
    assert [[r["n"] for r, _ in c] for c in chunks(items, 10, 3)] == [[0, 1, 2, 3, 4]]
    assert [lead_id_of(v) for v in ("12", " 7 ", "12.0", "x1", "", None, "-3")] == [
        12,
        7,
        12,
        None,
        None,
        None,
        None,
    ]
