"""The named steps of ``owner_messages``, each on the example of its docstring (felix-weber of
``rules/routing.yaml``: Berlin, 09:00-17:00; now Tuesday 24 Nov 2026, 13:00 UTC)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from icalendar import Calendar

from leadflow.routing import notices
from leadflow.routing.rules import load_rules

from helpers import NOTIFY_NOW, ROOT

pytestmark = pytest.mark.unit

RULES, VERSION, _ = load_rules(ROOT / "rules" / "routing.yaml")
FELIX = RULES.rep("felix-weber")
FIRST = (datetime(2026, 11, 24, 14, 0, tzinfo=UTC), datetime(2026, 11, 24, 14, 30, tzinfo=UTC))


def test_hot_lead_slots_three_per_hot_lead_and_none_for_warm_owners() -> None:
    routed = pd.DataFrame({"id": [1, 2, 3, 4], "owner": ["felix-weber"] * 3 + ["grace-murphy"]})
    details = pd.DataFrame({"temperature": ["hot", "warm", "hot", "warm"]}, index=[1, 2, 3, 4])
    reps = {rep.id: rep for rep in RULES.reps}
    free = notices.hot_lead_slots(routed, details, reps, NOTIFY_NOW, {})
    assert list(free) == ["felix-weber"]
    slots = free["felix-weber"]
    assert len(slots) == 6 and slots[0] == FIRST
    assert all(end - begin == timedelta(minutes=30) for begin, end in slots)
    busy = {"felix-weber": [FIRST]}
    assert notices.hot_lead_slots(routed, details, reps, NOTIFY_NOW, busy)["felix-weber"][0] == (
        FIRST[1],
        FIRST[1] + timedelta(minutes=30),
    )


def test_lead_texts_strips_and_fills_missing_fields() -> None:
    details = pd.DataFrame({"first_name": [" Ada ", None], "score": [91.5, None]})
    texts = notices.lead_texts(details)
    assert list(texts) == list(notices.LEAD_FIELDS)
    assert texts["first_name"] == ["Ada", None]
    assert texts["score"] == ["91.5", None]
    assert texts["phone"] == [None, None]


def test_take_slots_gives_each_hot_lead_its_own_three() -> None:
    half_hour = timedelta(minutes=30)
    six = [(FIRST[0] + k * half_hour, FIRST[1] + k * half_hour) for k in range(6)]
    free = {"felix-weber": six}
    used: dict[str, int] = {}
    assert notices.take_slots(free, used, "felix-weber", "hot") == six[:3]
    assert notices.take_slots(free, used, "felix-weber", "warm") == []
    assert notices.take_slots(free, used, "felix-weber", "hot") == six[3:]
    assert notices.take_slots(free, used, "grace-murphy", "hot") == []
    assert used == {"felix-weber": 6}


def lead(**fields: str | None) -> dict[str, str | None]:
    return {name: fields.get(name) for name in notices.LEAD_FIELDS}


def test_message_values_name_the_lead_and_show_slots_in_the_reps_zone() -> None:
    values = notices.message_values(FELIX, lead(last_name="Chen"), 7, "why", "v1", [FIRST])
    assert (values["lead_name"], values["rep_name"]) == ("Chen", "Felix")
    assert values["slots"] == ["Tue 24 Nov 15:00-15:30"]
    assert values["time_zone"] == "Europe/Berlin"
    assert notices.message_values(FELIX, lead(), 7, "why", "v1", [])["lead_name"] == "lead #7"


def test_owner_message_for_a_cold_lead_has_no_slots_or_invitation() -> None:
    fields = lead(first_name="Bo", last_name="Chen", company="Bo Ltd", temperature="cold")
    row = notices.owner_message(FELIX, fields, 2, "rule emea → pool emea", "v1", [], NOTIFY_NOW)
    assert row["idempotency_key"] == "owner:2:felix-weber"
    assert row["recipient"] == "felix.weber@leadflow-demo.example"
    assert row["subject"] == "New cold lead for you: Bo Chen (Bo Ltd)"
    assert "Why it is yours: rule emea → pool emea." in row["body"]
    assert "free slots" not in row["body"]
    assert row["payload"] == {
        "lead_id": 2,
        "owner": "felix-weber",
        "reason": "rule emea → pool emea",
        "slots": [],
    }
    assert row["attachments"] is None


def test_invitation_for_the_first_slot_with_a_uid_from_the_key() -> None:
    key = "owner:1:felix-weber"
    values = {"lead_name": "Ada Lovelace", "company": None, "email": "ada@engines.example"}
    assert notices.invitation(FELIX, values, [], key, NOTIFY_NOW) is None
    second = (FIRST[1], FIRST[1] + timedelta(minutes=30))
    [attachment] = notices.invitation(FELIX, values, [FIRST, second], key, NOTIFY_NOW)
    assert attachment["filename"] == "first-meeting.ics"
    assert attachment["content_type"] == "text/calendar; method=REQUEST"
    event = next(iter(Calendar.from_ical(attachment["content"]).walk("VEVENT")))
    assert event.decoded("dtstart") == FIRST[0]
    assert str(event["uid"]) == hashlib.sha256(key.encode()).hexdigest()[:24] + "@leadflow"
    assert str(event["summary"]) == "First call: Ada Lovelace"


def test_owner_messages_worked_example_and_nothing_for_waiting_leads() -> None:
    leads = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "first_name": ["Ada", "Bo", "Cy"],
            "last_name": ["Lovelace", "Chen", None],
            "company": ["Analytical Engines", "Bo Ltd", None],
            "temperature": ["hot", "cold", "hot"],
        }
    )
    assignments = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "owner": ["felix-weber", "felix-weber", None],
            "reason": ["r1", "r2", "pool emea full, waiting"],
            "version": VERSION,
        }
    )
    messages = notices.owner_messages(assignments, leads, RULES, NOTIFY_NOW)
    assert messages["idempotency_key"].tolist() == ["owner:1:felix-weber", "owner:2:felix-weber"]
    hot, cold = messages.iloc[0], messages.iloc[1]
    for slot in ("Tue 24 Nov 15:00-15:30", "Tue 24 Nov 15:30-16:00", "Tue 24 Nov 16:00-16:30"):
        assert f"  - {slot}\n" in hot["body"]
    assert len(hot["attachments"]) == 1
    assert cold["payload"]["slots"] == [] and cold["attachments"] is None
    nobody = assignments.assign(owner=None)
    empty = notices.owner_messages(nobody, leads, RULES, NOTIFY_NOW)
    assert empty.empty and list(empty.columns) == list(notices.outbox.MESSAGE_COLUMNS)
