"""Owner notifications: the message says why and offers slots for hot leads."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from icalendar import Calendar

from helpers import routed_messages


@pytest.mark.unit
def test_owner_message_says_why_and_offers_slots_for_hot_leads() -> None:
    assignments, messages = routed_messages()
    hot, cold = messages.iloc[0], messages.iloc[1]
    assert hot["recipient"] == "felix.weber@leadflow-demo.example"
    assert hot["idempotency_key"] == "owner:1:felix-weber"
    assert assignments["reason"].iloc[0] in hot["body"]
    assert "Ada Lovelace at Analytical Engines" in hot["body"] and "(hot)" in hot["body"]
    # Felix works 09:00-17:00 Berlin; now is 14:00 there; not before an hour from now.
    assert "Tue 24 Nov 15:00-15:30" in hot["body"]
    invitation = Calendar.from_ical(hot["attachments"][0]["content"])
    event = next(iter(invitation.walk("VEVENT")))
    assert event.decoded("dtstart") == datetime(2026, 11, 24, 14, 0, tzinfo=UTC)
    assert str(event["organizer"]) == "mailto:felix.weber@leadflow-demo.example"
    assert cold["attachments"] is None and "free slots" not in cold["body"]
