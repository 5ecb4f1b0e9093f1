"""The booking page in a real browser (Debian's headless chromium), against ``leadflow
serve``'s app on a loopback port and the rep's calendar on a real CalDAV server (Radicale).

Two leads in Tokyo of one rep in Berlin open their links; the times are on Tokyo's clock and
the hour the rep is busy on their calendar is not offered. The first lead books a time; the
second, whose page was opened before, clicks the same time and is told it was just taken,
with the next free times. The booked meeting is then written to the rep's calendar by the
outbox sender."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from browser import Browsers, serving, text_appears
from loopback.caldav_server import Radicale
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from sqlalchemy import Engine, select

from app.web import Capture, Limits, create_app
from blocks.calendar import CalDavCalendars
from leadflow import store
from leadflow import tables as t
from leadflow.booking.rules import BookingRules
from leadflow.booking.service import Booking
from leadflow.booking.store import create_links
from leadflow.calendars import CalendarConfig, Calendars
from leadflow.outbox.sender import send_due

from helpers import MAPPING, NOW, free_port, mqls, route_to

pytestmark = pytest.mark.e2e

TOKYO = ZoneInfo("Asia/Tokyo")
# NOW: Monday 2 Nov 2026 15:00 UTC. Cem (Berlin, 09:00-17:00) is busy on Tuesday from 09:00
# to 09:30 (08:00-08:30 UTC): the first time offered is 09:30 in Berlin, 17:30 in Tokyo.
BUSY = (datetime(2026, 11, 3, 8, tzinfo=UTC), datetime(2026, 11, 3, 8, 30, tzinfo=UTC))
FIRST_FREE = BUSY[1]
SCREENSHOT = "/tmp/booking-page.png"


@pytest.fixture(autouse=True)
def _prefect_server(no_prefect_api: None) -> None:
    """Overrides e2e/conftest.py's: nothing here talks to a Prefect API."""


@pytest.fixture
def browsers() -> Iterator[Browsers]:
    opened = Browsers()
    try:
        yield opened
    finally:
        opened.quit()


@pytest.fixture
def calendar() -> Iterator[tuple[Radicale, CalendarConfig]]:
    """Radicale with Cem's calendar, busy on Tuesday from 09:00 to 09:30 in Berlin."""
    with Radicale() as server:
        url = server.make_calendar("cem")
        server.add_event(url, *BUSY, "Dentist")
        config = CalendarConfig(
            url=server.url,
            username=server.username,
            password=server.password,
            calendars={"cem": url},
        )
        yield server, config


def key(start: datetime) -> str:
    return f"cem@{int(start.timestamp())}"


def add_rep(engine: Engine) -> int:
    with engine.begin() as conn:
        conn.execute(
            t.reps.insert().values(
                email="cem@reps.example",
                name="Cem Celik",
                code="cem",
                timezone="Europe/Berlin",
                working_hours={"mon-fri": ["09:00-17:00"]},
                pools=["emea"],
                created_at=NOW,
            )
        )
        return int(conn.execute(select(t.reps.c.id)).scalar_one())


def offered(driver: WebDriver) -> list[tuple[str, str]]:
    """The slot buttons on the page: (the slot posted, the time shown)."""
    return [
        (button.get_attribute("value"), button.text)
        for button in driver.find_elements(By.CSS_SELECTOR, "button[name=slot]")
    ]


def click_slot(driver: WebDriver, slot: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'button[name=slot][value="{slot}"]').click()


def test_two_leads_book_in_the_browser_around_the_reps_calendar(
    database_url: str,
    browsers: Browsers,
    calendar: tuple[Radicale, CalendarConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, config = calendar
    port = free_port()
    monkeypatch.setenv("LEADFLOW_PUBLIC_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LEADFLOW_UNSUBSCRIBE_SECRET", "browser-test-secret")
    engine = store.get_engine(database_url)
    leads = mqls(engine, ["JP", "JP"])
    route_to(engine, leads, add_rep(engine))
    with engine.begin() as conn:
        links = create_links(conn, leads, NOW, timedelta(days=14))
    without_calendar = Booking(database_url, Calendars(None), BookingRules())
    assert without_calendar.view(links[leads[0]], None, NOW).offer.find(key(BUSY[0]))
    app = create_app(
        database_url,
        Capture(token="browser-test-token", mapping_path=MAPPING, emit_events=False),
        Limits(),
        booking=Booking(database_url, Calendars(config), BookingRules()),
        clock=lambda: NOW,
    )
    with serving(app, port) as base:
        first, second = browsers.open(), browsers.open()
        first.get(f"{base}/book/{links[leads[0]]}")
        second.get(f"{base}/book/{links[leads[1]]}")  # opened before the first lead books
        text = text_appears(first, "Pick a time for a call with Cem.")
        assert "Hello Lee," in text and "Asia/Tokyo" in text
        slots = offered(first)
        assert slots[0] == (key(FIRST_FREE), "17:30") and key(BUSY[0]) not in dict(slots)
        for slot, label in slots:  # each time on Tokyo's clock
            assert label == f"{datetime.fromtimestamp(int(slot.split('@')[1]), TOKYO):%H:%M}"
        assert offered(second) == slots
        first.save_screenshot(SCREENSHOT)

        click_slot(first, key(FIRST_FREE))
        done = text_appears(first, "You're booked")
        assert "You're booked: Tuesday 3 November 2026, 17:30 (JST) with Cem." in done
        assert first.find_element(By.LINK_TEXT, "Reschedule or cancel your call")

        click_slot(second, key(FIRST_FREE))
        text_appears(second, "That time was just taken")
        fresh = dict(offered(second))
        assert fresh and key(FIRST_FREE) not in fresh and key(BUSY[0]) not in fresh
        assert key(FIRST_FREE + timedelta(minutes=30)) in fresh

    with engine.connect() as conn:
        meetings = conn.execute(select(t.meetings.c.lead_id, t.meetings.c.uid)).all()
    assert [lead for lead, _ in meetings] == [leads[0]]
    report = send_due(engine, [CalDavCalendars.from_config(config)], 100, NOW)
    assert report.sent >= 1, report.errors
    events = {
        uid: (start, summary) for uid, start, _, summary in server.events(config.calendars["cem"])
    }
    start, summary = events[meetings[0].uid]
    assert start == FIRST_FREE and summary.startswith("First call: Lee")
