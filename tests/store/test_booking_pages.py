"""The booking pages of ``leadflow serve`` (``app/web.py``) over a real database: a routed
lead's link lists its owner's slots in the lead's time zone, books one (Post/Redirect/Get),
refuses every link that is not valid with one 403 page, keeps a slot to one lead, frees it
on cancel, moves it on reschedule, rate-limits and sends its security headers; and
``POST /leads?wait=N`` answers the booking link the lane made meanwhile."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update

from app.web import BOOKING_HEADERS, Capture, Limits, create_app
from leadflow import store
from leadflow import tables as t
from leadflow.booking import tokens
from leadflow.booking.rules import BookingRules
from leadflow.booking.service import Booking
from leadflow.booking.store import create_links, newest_link
from leadflow.calendars import CalendarConfig, Calendars

from helpers import AUTH, HOT, MAPPING, NOW, TOKEN, mqls, route_to

pytestmark = pytest.mark.store

PUBLIC = "https://leads.example.com"
LIFE = timedelta(days=14)
TOKYO = ZoneInfo("Asia/Tokyo")
# NOW is Monday 2 Nov 2026 15:00 UTC, 16:00 in Berlin: with an hour's notice Cem's first slot
# is Tuesday 09:00 Berlin = 08:00 UTC = 17:00 in Tokyo.
FIRST = datetime(2026, 11, 3, 8, tzinfo=UTC)
BUTTON = re.compile(r'<button type="submit" name="slot" value="([^"]+)">(\d\d:\d\d)')
FORM = re.compile(r'name="form" value="([0-9a-f]{32})"')
INVALID = "This link is not valid."


@dataclass
class Site:
    """Three leads from Japan, Japan and Germany, routed to Cem (Berlin), with their links."""

    client: TestClient
    engine: Engine
    booking: Booking
    leads: list[int]
    links: dict[int, str]

    def page(self, lead: int, **params: str):
        return self.client.get(f"/book/{self.links[lead]}", params=params)

    def post(self, lead: int, slot: str, form: str | None = "", tz: str = "", **headers: str):
        token = self.links[lead]
        data = {"slot": slot, "tz": tz}
        if form is not None:
            data["form"] = form or tokens.form_token(token)
        return self.client.post(
            f"/book/{token}", data=data, headers=headers, follow_redirects=False
        )

    def meetings(self) -> list[tuple[int, datetime, str]]:
        m = t.meetings
        with self.engine.connect() as conn:
            rows = conn.execute(select(m.c.lead_id, m.c.starts_at, m.c.status).order_by(m.c.id))
            return [(int(lead), _utc(start), status) for lead, start, status in rows]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def key(rep: str, start: datetime) -> str:
    return f"{rep}@{int(start.timestamp())}"


def secure(answer) -> bool:
    """The answer carries every security header of the booking pages."""
    return all(answer.headers.get(name) == value for name, value in BOOKING_HEADERS.items())


def slots(html: str) -> list[tuple[str, str]]:
    """The page's slot buttons: (form key, time label)."""
    return BUTTON.findall(html)


def add_rep(engine: Engine, code: str, name: str, zone: str) -> int:
    with engine.begin() as conn:
        conn.execute(
            t.reps.insert().values(
                email=f"{code}@reps.example",
                name=name,
                code=code,
                timezone=zone,
                working_hours={"mon-fri": ["09:00-17:00"]},
                pools=["emea"],
                created_at=NOW,
            )
        )
        return int(conn.execute(select(t.reps.c.id).where(t.reps.c.code == code)).scalar_one())


@pytest.fixture
def signing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_PUBLIC_URL", PUBLIC)
    monkeypatch.setenv("LEADFLOW_UNSUBSCRIBE_SECRET", "booking-pages-test-secret")


@pytest.fixture
def site(database_url: str, signing: None) -> Site:
    engine = store.get_engine(database_url)
    rep = add_rep(engine, "cem", "Cem Celik", "Europe/Berlin")
    leads = mqls(engine, ["JP", "JP", "DE"])
    route_to(engine, leads, rep)
    with engine.begin() as conn:
        links = create_links(conn, leads, NOW, LIFE)
    booking = Booking(database_url, Calendars(None), BookingRules())
    app = create_app(database_url, limits=Limits(), booking=booking, clock=lambda: NOW)
    return Site(TestClient(app), engine, booking, leads, links)


def test_the_page_lists_the_owners_slots_in_the_leads_zone(site: Site) -> None:
    lead = site.leads[0]
    answer = site.page(lead)
    assert answer.status_code == 200, answer.text
    html = answer.text
    offered = slots(html)
    expected = site.booking.view(site.links[lead], None, NOW).offer.slots
    assert [k for k, _ in offered] == [s.key for s in expected] and len(offered) >= 10
    for slot_key, label in offered:  # every time is the slot's start on a clock in Tokyo
        start = datetime.fromtimestamp(int(slot_key.split("@")[1]), TOKYO)
        assert label == f"{start:%H:%M}"
    assert offered[0] == (key("cem", FIRST), "17:00")
    assert "Tuesday 3 November" in html and "Asia/Tokyo" in html
    assert "Hello Lee," in html and "Pick a time for a call with Cem." in html
    assert "Celik" not in html and "@reps.example" not in html and "<script" not in html
    assert f'name="form" value="{tokens.form_token(site.links[lead])}"' in html
    # The zone picker: the same slots on a New York clock (08:00 UTC is 03:00 EST).
    other = site.page(lead, tz="America/New_York").text
    assert slots(other)[0] == (key("cem", FIRST), "03:00")
    assert '<option value="America/New_York" selected>' in other
    assert '<input type="hidden" name="tz" value="America/New_York">' in other
    # A zone that does not exist falls back to the lead's own (and is not carried on).
    mars = site.page(lead, tz="Mars/Olympus").text
    assert slots(mars)[0] == (key("cem", FIRST), "17:00") and "Mars" not in mars


def test_a_leads_name_is_escaped(site: Site) -> None:
    lead = site.leads[2]
    with site.engine.begin() as conn:
        conn.execute(
            update(t.leads)
            .where(t.leads.c.id == lead)
            .values(first_name="<script>alert(1)</script>")
        )
    html = site.page(lead).text
    assert "<script" not in html
    assert "Hello &lt;script&gt;alert(1)&lt;/script&gt;," in html
    # Germany's zone: the first slot is 09:00 on Berlin's clock.
    assert slots(html)[0] == (key("cem", FIRST), "09:00")


def test_every_invalid_link_is_the_same_403_then_the_address_is_locked_out(
    site: Site, database_url: str
) -> None:
    good = site.links[site.leads[0]]
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    old_id, ended = tokens.new_id(), NOW - timedelta(days=6)
    with site.engine.begin() as conn:  # a link made 20 days ago, for 14: expired
        conn.execute(
            t.booking_links.insert().values(
                lead_id=site.leads[1], token_id=old_id, created_at=ended - LIFE, expires_at=ended
            )
        )
    expired = tokens.book_token(old_id, ended)
    unknown = tokens.book_token(tokens.new_id(), NOW + LIFE)  # signed, but no such link
    answers = [site.client.get(f"/book/{bad}") for bad in (tampered, expired, unknown, "x")]
    assert {a.status_code for a in answers} == {403}
    assert len({a.text for a in answers}) == 1 and INVALID in answers[0].text
    manage = site.client.get(f"/booking/{tokens.manage_token(tokens.new_id())}")
    assert manage.status_code == 403 and manage.text == answers[0].text
    assert site.meetings() == []
    # Five wrong links from one address: it hears 429 even for a right one.
    locked = site.client.get(f"/book/{good}")
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
    assert secure(locked)


def test_a_post_needs_the_pages_form_token_and_a_form_from_this_site(site: Site) -> None:
    lead, slot = site.leads[0], key("cem", FIRST)
    assert site.post(lead, slot, form=None).status_code == 403
    other = tokens.form_token(site.links[site.leads[1]])  # another page's form token
    assert site.post(lead, slot, form=other).status_code == 403
    as_json = site.client.post(f"/book/{site.links[lead]}", json={"slot": slot})
    assert as_json.status_code == 415
    assert site.post(lead, slot, origin="https://evil.example").status_code == 403
    cross = site.post(lead, slot, origin="null", **{"sec-fetch-site": "cross-site"})
    assert cross.status_code == 403
    big = site.client.post(
        f"/book/{site.links[lead]}",
        content=b"slot=" + b"x" * 5000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413
    assert site.meetings() == []
    # From the public URL's origin (behind a proxy) the same post books, in the zone the
    # lead picked on the page, which the page then keeps.
    booked = site.post(lead, slot, origin=PUBLIC, tz="America/New_York")
    assert booked.status_code == 303
    assert booked.headers["location"] == f"/book/{site.links[lead]}?tz=America%2FNew_York"
    page = site.client.get(booked.headers["location"]).text
    assert "You're booked: Tuesday 3 November 2026, 03:00 (EST) with Cem." in page
    assert site.meetings() == [(lead, FIRST, "booked")]
    with site.engine.connect() as conn:
        assert conn.execute(select(t.meetings.c.lead_zone)).scalar_one() == "America/New_York"


def test_book_then_confirmation_replay_and_a_slot_taken_meanwhile(site: Site) -> None:
    first, second = site.leads[0], site.leads[1]
    slot = key("cem", FIRST)
    assert slot in dict(slots(site.page(second).text))  # the second lead's page, opened first
    booked = site.post(first, slot, origin="http://testserver")
    assert booked.status_code == 303 and booked.headers["location"] == f"/book/{site.links[first]}"
    assert secure(booked)
    page = site.page(first).text
    assert "You're booked: Tuesday 3 November 2026, 17:00 (JST) with Cem." in page
    manage = re.search(r'href="/booking/([^"]+)"', page).group(1)
    assert tokens.read_manage_token(manage) is not None and not slots(page)
    # The same form posted again (a double click, a reload): still one meeting.
    assert site.post(first, slot).status_code == 303
    assert site.meetings() == [(first, FIRST, "booked")]
    # The second lead posts the slot its page offered: taken, with the next free slots.
    taken = site.post(second, slot)
    assert taken.status_code == 409 and "That time was just taken" in taken.text
    fresh = [k for k, _ in slots(taken.text)]
    assert fresh and slot not in fresh and key("cem", FIRST + timedelta(minutes=30)) in fresh
    assert site.meetings() == [(first, FIRST, "booked")]


def test_reschedule_moves_the_meeting_and_cancel_frees_the_slot(site: Site) -> None:
    first, second = site.leads[0], site.leads[1]
    slot = key("cem", FIRST)
    assert site.post(first, slot).status_code == 303
    manage = re.search(r'href="/booking/([^"]+)"', site.page(first).text).group(1)
    page = site.client.get(f"/booking/{manage}")
    assert page.status_code == 200 and "Booked: Tuesday 3 November 2026, 17:00 (JST)" in page.text
    offered = [k for k, _ in slots(page.text)]
    later = key("cem", FIRST + timedelta(hours=1))
    assert slot not in offered and later in offered
    form = FORM.search(page.text).group(1)
    assert form == tokens.form_token(manage)
    assert site.client.post(f"/booking/{manage}/cancel", data={"x": "1"}).status_code == 403
    moved = site.client.post(
        f"/booking/{manage}/reschedule", data={"form": form, "slot": later}, follow_redirects=False
    )
    assert moved.status_code == 303 and moved.headers["location"] == f"/booking/{manage}"
    assert site.meetings() == [(first, FIRST + timedelta(hours=1), "booked")]
    assert "You're booked: Tuesday 3 November 2026, 18:00 (JST)" in site.page(first).text
    offered = [k for k, _ in slots(site.page(second).text)]
    assert slot in offered and later not in offered  # the old time is free again
    cancelled = site.client.post(
        f"/booking/{manage}/cancel", data={"form": form}, follow_redirects=False
    )
    assert cancelled.status_code == 303
    assert "is cancelled" in site.client.get(f"/booking/{manage}").text
    assert site.meetings() == [(first, FIRST + timedelta(hours=1), "cancelled")]
    assert later in [k for k, _ in slots(site.page(second).text)]
    assert later in [k for k, _ in slots(site.page(first).text)]  # the lead may book again


def test_rate_limit_per_link_and_security_headers(site: Site) -> None:
    token = site.links[site.leads[0]]
    answers = [site.client.get(f"/book/{token}") for _ in range(31)]
    assert [a.status_code for a in answers] == [200] * 30 + [429]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    for answer in (answers[0], answers[-1], site.client.get(f"/book/{site.links[site.leads[1]]}")):
        assert secure(answer)
    assert answers[0].headers["content-security-policy"].startswith("default-src 'none'")


def test_a_database_that_is_gone_is_a_503_page(site: Site) -> None:
    gone = "postgresql://postgres@127.0.0.1:9/leadflow"  # nothing listens on the discard port
    broken = Booking(gone, Calendars(None), BookingRules())
    client = TestClient(create_app(gone, booking=broken, clock=lambda: NOW))
    answer = client.get(f"/book/{site.links[site.leads[0]]}")
    assert answer.status_code == 503 and "please try again" in answer.text
    assert answer.headers["Retry-After"] == "5"
    posted = client.post(
        f"/book/{site.links[site.leads[0]]}",
        data={"form": tokens.form_token(site.links[site.leads[0]]), "slot": key("cem", FIRST)},
    )
    assert posted.status_code == 503
    assert secure(answer)


def test_post_leads_waits_for_the_booking_link(
    database_url: str, signing: None, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    engine = store.get_engine(database_url)
    made: list[str] = []

    def lane(ids: list[int]) -> None:  # the lane routes the lead and makes its link ~0.3 s on
        def route() -> None:
            time.sleep(0.3)
            with engine.begin() as conn:
                made.extend(create_links(conn, ids, datetime.now(UTC), LIFE).values())

        threading.Thread(target=route, daemon=True).start()

    capture = Capture(token=TOKEN, mapping_path=MAPPING, hand_off=lane, emit_events=False)
    client = TestClient(create_app(database_url, capture))
    started = time.monotonic()
    answer = client.post("/leads?wait=10", json={"email": "ann@acme.example", **HOT}, headers=AUTH)
    took = time.monotonic() - started
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert made and body["booking_url"] == f"{PUBLIC}/book/{made[0]}", body
    assert 0.3 <= took < 8  # answered once the link was made, not at the end of the wait
    with engine.connect() as conn:
        assert newest_link(conn, body["lead_id"], datetime.now(UTC)) == made[0]
    # The link opens on this app, whose booking is made on the first request: a CalDAV
    # setting that is wrong is logged and the page goes on without calendars; the lead was
    # never routed here, so there is nothing to book.
    monkeypatch.setenv("LEADFLOW_CALDAV_URL", "ftp://calendars.example")
    with caplog.at_level(logging.ERROR, logger="app.web"):
        closed = client.get(urlsplit(body["booking_url"]).path)
    assert closed.status_code == 410 and "no longer books a call" in closed.text
    assert "LEADFLOW_CALDAV_URL" in caplog.text
    # Without wait, the answer is as before; a link that does not come in time is pending.
    plain = Capture(token=TOKEN, mapping_path=MAPPING, emit_events=False)
    client = TestClient(create_app(database_url, plain))
    now = client.post("/leads", json={"email": "bo@bo.example", **HOT}, headers=AUTH).json()
    assert "booking_url" not in now and "booking" not in now
    waited = client.post(
        "/leads", json={"email": "cy@cy.example", **HOT}, headers={**AUTH, "Prefer": "wait=0.3"}
    )
    assert waited.json()["booking"] == "pending"
    assert waited.headers["preference-applied"] == "wait=0.3"
    refused = client.post("/leads?wait=11", json={"email": "di@di.example", **HOT}, headers=AUTH)
    assert refused.status_code == 400
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.leads)).scalar_one() == 3


def test_a_calendar_that_does_not_answer_leaves_working_hours_and_says_so(site: Site) -> None:
    down = CalendarConfig(
        url="http://127.0.0.1:9/",  # nothing listens on the discard port
        username=None,
        password=None,
        calendars={"cem": "/leadflow/cem/"},
        timeout_seconds=1,
    )
    booking = Booking(site.engine.url.render_as_string(False), Calendars(down), BookingRules())
    client = TestClient(
        create_app(site.engine.url.render_as_string(False), booking=booking, clock=lambda: NOW)
    )
    html = client.get(f"/book/{site.links[site.leads[0]]}").text
    assert "times from working hours; Cem's calendar could not be checked just now" in html
    assert slots(html)[0] == (key("cem", FIRST), "17:00")


def test_a_booking_a_move_and_a_cancel_hand_the_lead_to_the_lane(site: Site) -> None:
    """``leadflow serve`` hands the lead whose meeting changed to the lane, which sends its
    invitations at once; a replayed form hands nothing."""
    handed: list[list[int]] = []
    capture = Capture(token=TOKEN, mapping_path=MAPPING, hand_off=handed.append, emit_events=False)
    url = site.engine.url.render_as_string(False)
    client = TestClient(
        create_app(url, capture, limits=Limits(), booking=site.booking, clock=lambda: NOW)
    )
    lead, token = site.leads[0], site.links[site.leads[0]]
    data = {"slot": key("cem", FIRST), "tz": "", "form": tokens.form_token(token)}
    assert client.post(f"/book/{token}", data=data, follow_redirects=False).status_code == 303
    assert client.post(f"/book/{token}", data=data, follow_redirects=False).status_code == 303
    assert handed == [[lead]]
    manage = re.search(r'href="/booking/([^"]+)"', client.get(f"/book/{token}").text).group(1)
    form = {"form": tokens.form_token(manage)}
    moved = {**form, "slot": key("cem", FIRST + timedelta(hours=1))}
    assert (
        client.post(f"/booking/{manage}/reschedule", data=moved, follow_redirects=False).status_code
        == 303
    )
    assert (
        client.post(f"/booking/{manage}/cancel", data=form, follow_redirects=False).status_code
        == 303
    )
    assert (
        client.post(f"/booking/{manage}/cancel", data=form, follow_redirects=False).status_code
        == 303
    )
    assert handed == [[lead], [lead], [lead]]


def test_booking_switched_off_answers_not_available(site: Site) -> None:
    off = Booking(
        site.engine.url.render_as_string(False), Calendars(None), BookingRules(enabled=False)
    )
    client = TestClient(
        create_app(site.engine.url.render_as_string(False), booking=off, clock=lambda: NOW)
    )
    answer = client.get(f"/book/{site.links[site.leads[0]]}")
    assert answer.status_code == 404 and "Booking is not available." in answer.text


def test_post_leads_never_hands_an_existing_leads_link_to_whoever_posts(
    database_url: str, signing: None
) -> None:
    """A post merged into a lead that exists may come from anyone who knows its address:
    its link (which opens that lead's meeting) goes to the lead's email only. A lead that
    will not be routed stops the wait at once."""
    engine = store.get_engine(database_url)

    def lane(ids: list[int]) -> None:  # routes and links every lead at once
        with engine.begin() as conn:
            create_links(conn, ids, datetime.now(UTC), LIFE)

    capture = Capture(token=TOKEN, mapping_path=MAPPING, hand_off=lane, emit_events=False)
    client = TestClient(create_app(database_url, capture))
    first = client.post("/leads?wait=2", json={"email": "ann@acme.example", **HOT}, headers=AUTH)
    assert "booking_url" in first.json()
    again = client.post(
        "/leads?wait=2",
        json={"email": "ann@acme.example", "first_name": "Mallory"},
        headers=AUTH,
    ).json()
    assert again["status"] == "merged" and "booking_url" not in again
    assert again["booking"] == "by email"

    def nurture(ids: list[int]) -> None:  # the lane scores the lead into nurture: no rep
        with engine.begin() as conn:
            conn.execute(update(t.leads).where(t.leads.c.id.in_(ids)).values(status="nurturing"))

    cold = Capture(token=TOKEN, mapping_path=MAPPING, hand_off=nurture, emit_events=False)
    client = TestClient(create_app(database_url, cold))
    started = time.monotonic()
    waited = client.post("/leads?wait=10", json={"email": "cold@cold.example"}, headers=AUTH)
    assert waited.json()["booking"] == "not offered" and time.monotonic() - started < 8


def test_a_time_zone_no_system_knows_is_ignored_not_a_failure(site: Site) -> None:
    for asked in ("a" * 300, "../../etc/passwd", "Europe/Nowhere", "\x00"):
        answer = site.page(site.leads[0], tz=asked)
        assert answer.status_code == 200 and "Asia/Tokyo" in answer.text
