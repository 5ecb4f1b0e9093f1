"""Reps' CalDAV calendars (``leadflow.calendars``) and the outbox's ``caldav`` channel,
against a real Radicale server on loopback (``loopback.caldav_server``): busy times with
recurrences, all-day, free and cancelled events; the caches; idempotent put and delete; a
server that is down or hangs; a wrong password; the configuration from the environment; and
``calendar_event`` messages delivered by ``send_due``. No database but the outbox's SQLite."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
from loopback.caldav_server import Radicale
from sqlalchemy import select

from blocks.calendar import CalDavCalendars, calendar_block
from leadflow import store
from leadflow import tables as t
from leadflow.calendars import (
    CalendarConfig,
    Calendars,
    CalendarUnavailable,
    config_from_env,
)
from leadflow.config import ConfigError
from leadflow.outbox import store as outbox
from leadflow.outbox.sender import BREAKER_COOL_OFF, send_due
from tasks import outbox as outbox_tasks

pytestmark = pytest.mark.store

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)  # the window of most tests: 8 days from here
WEEK = (MONDAY, MONDAY + timedelta(days=8))  # to Tuesday 10 March
NOW = datetime(2026, 2, 20, 12, 0, tzinfo=UTC)


def at(day: int, hour: float) -> datetime:
    """March ``day`` 2026 at ``hour`` (UTC)."""
    return datetime(2026, 3, day, tzinfo=UTC) + timedelta(hours=hour)


@pytest.fixture(scope="module")
def radicale() -> Iterator[Radicale]:
    with Radicale() as server:
        yield server


@pytest.fixture
def rep(radicale: Radicale) -> tuple[str, str]:
    """A new rep code and its new, empty calendar's URL."""
    code = f"rep-{uuid.uuid4().hex[:8]}"
    return code, radicale.make_calendar(code)


def config(
    radicale: Radicale,
    calendars: dict[str, str],
    *,
    password: str | None = None,
    timeout_seconds: float = 2.0,
    cache_seconds: float = 60.0,
) -> CalendarConfig:
    return CalendarConfig(
        url=radicale.url,
        username=radicale.username,
        password=password or radicale.password,
        calendars=calendars,
        timeout_seconds=timeout_seconds,
        cache_seconds=cache_seconds,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ics(uid: str, start: datetime, end: datetime, summary: str = "Intro call") -> str:
    stamp = f"{start:%Y%m%dT%H%M%SZ}"
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//leadflow//booking//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:{stamp}\r\nSEQUENCE:0\r\n"
        f"DTSTART:{start:%Y%m%dT%H%M%SZ}\r\nDTEND:{end:%Y%m%dT%H%M%SZ}\r\n"
        f"SUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )


# --------------------------------------------------------------------------- busy


def test_busy_reads_opaque_recurring_and_all_day_events_not_free_or_cancelled_ones(
    radicale: Radicale, rep: tuple[str, str]
) -> None:
    code, url = rep
    radicale.add_event(url, at(2, 9), at(2, 10), "Pipeline review")
    radicale.add_event(url, at(2, 9.5), at(2, 10.5), "Overlaps it")  # merged with the first
    radicale.add_event(url, at(2, 11), at(2, 12), "Focus (free)", transparent=True)
    radicale.add_event(url, at(2, 13), at(2, 14), "Called off", status="CANCELLED")
    # Weekly since February, Mondays 14-15: the window holds the 2 and 9 March instances.
    feb = datetime(2026, 2, 2, 14, tzinfo=UTC)
    radicale.add_event(url, feb, feb + timedelta(hours=1), "1:1", rrule={"FREQ": "WEEKLY"})
    radicale.add_event(url, date(2026, 3, 4), date(2026, 3, 5), "Offsite")  # all day
    radicale.add_event(url, at(20, 9), at(20, 10), "Later")  # outside the window
    radicale.add_event(url, at(1, 9), at(1, 10), "Before")  # outside the window
    calendars = Calendars(config(radicale, {code: url}))

    assert calendars.busy(code, *WEEK) == [
        (at(2, 9), at(2, 10.5)),
        (at(2, 14), at(2, 15)),
        (at(4, 0), at(5, 0)),
        (at(9, 14), at(9, 15)),
    ]
    # A window inside an hour: the events overlapping that hour (9:00-10:00 does not), whole.
    assert calendars.busy(code, at(2, 10.25), at(2, 10.75)) == [(at(2, 9.5), at(2, 10.5))]
    assert calendars.busy(code, at(2, 10.5), at(2, 14)) == []
    assert calendars.busy(code, at(10, 0), at(16, 0)) == []
    assert calendars.busy(code, at(17, 0), at(22, 0)) == [(at(20, 9), at(20, 10))]
    # In the rep's zone, the all-day event is that zone's day (New York: UTC-5 in March).
    in_new_york = calendars.busy(code, at(4, 0), at(5, 12), tz="America/New_York")
    assert in_new_york == [(at(4, 5), at(5, 5))]


def test_busy_answers_are_cached_per_rep_and_put_forgets_them(
    radicale: Radicale, rep: tuple[str, str]
) -> None:
    code, url = rep
    radicale.add_event(url, at(3, 9), at(3, 10), "Standup")
    clock = Clock()
    calendars = Calendars(config(radicale, {code: url}, cache_seconds=60), clock=clock)
    assert calendars.busy(code, at(3, 8.25), at(3, 17.5)) == [(at(3, 9), at(3, 10))]
    radicale.add_event(url, at(3, 15), at(3, 16), "Added meanwhile")
    clock.now += 59
    # The same hours (the window rounds out to 8:00-18:00): the cached answer, not asked for.
    assert calendars.busy(code, at(3, 8.5), at(3, 17.75)) == [(at(3, 9), at(3, 10))]
    radicale.down()
    try:
        assert calendars.busy(code, at(3, 8), at(3, 18)) == [(at(3, 9), at(3, 10))]
    finally:
        radicale.up()
    clock.now += 2  # expired: asked again
    assert calendars.busy(code, at(3, 8), at(3, 18)) == [
        (at(3, 9), at(3, 10)),
        (at(3, 15), at(3, 16)),
    ]
    # A put forgets the rep's busy times at once.
    calendars.put(code, "meeting-1@leadflow", ics("meeting-1@leadflow", at(3, 11), at(3, 12)))
    assert (at(3, 11), at(3, 12)) in calendars.busy(code, at(3, 8), at(3, 18))


def test_put_twice_leaves_one_event_with_the_new_times_and_delete_is_idempotent(
    radicale: Radicale, rep: tuple[str, str]
) -> None:
    code, url = rep
    calendars = Calendars(config(radicale, {code: url}))
    uid = "booking-42@leadflow.example"
    calendars.put(code, uid, ics(uid, at(5, 10), at(5, 10.5)))
    assert calendars.busy(code, *WEEK) == [(at(5, 10), at(5, 10.5))]
    calendars.put(code, uid, ics(uid, at(6, 15), at(6, 15.5), "Moved"))
    calendars.put(code, uid, ics(uid, at(6, 15), at(6, 15.5), "Moved"))
    assert radicale.events(url) == [(uid, at(6, 15), at(6, 15.5), "Moved")]
    assert calendars.busy(code, *WEEK) == [(at(6, 15), at(6, 15.5))]
    calendars.delete(code, uid)
    assert radicale.events(url) == []
    calendars.delete(code, uid)  # already gone: fine
    assert calendars.busy(code, *WEEK) == []
    with pytest.raises(ValueError, match="UID"):
        calendars.put(code, "other@leadflow", ics(uid, at(6, 9), at(6, 10)))


def test_an_event_stored_elsewhere_by_another_client_is_replaced_and_deleted_where_it_is(
    radicale: Radicale, rep: tuple[str, str]
) -> None:
    code, url = rep
    uid = "made-by-a-calendar-app"
    client = radicale.client()
    answer = client.put(f"{url}app-chosen-name.ics", ics(uid, at(5, 9), at(5, 10)), {})
    assert answer.status == 201
    calendars = Calendars(config(radicale, {code: url}))
    calendars.put(code, uid, ics(uid, at(5, 13), at(5, 14), "Replaced"))
    assert radicale.events(url) == [(uid, at(5, 13), at(5, 14), "Replaced")]
    calendars.delete(code, uid)
    assert radicale.events(url) == []


# --------------------------------------------------------------------------- failures


def test_a_down_server_fails_fast_once_per_rep_and_the_failure_is_cached(
    radicale: Radicale, rep: tuple[str, str]
) -> None:
    code, url = rep
    clock = Clock()
    calendars = Calendars(config(radicale, {code: url}, timeout_seconds=1), clock=clock)
    radicale.down()
    try:
        began = time.monotonic()
        with pytest.raises(CalendarUnavailable) as down:
            calendars.busy(code, *WEEK)
        assert time.monotonic() - began < 5  # refused: no retries with back-off
        assert down.value.status is None and not down.value.permanent
        assert code in str(down.value) and "unreachable" in str(down.value)
        assert "\n" not in str(down.value) and radicale.password not in str(down.value)
        # put and delete say the same (the outbox puts its message back).
        with pytest.raises(CalendarUnavailable):
            calendars.put(code, "x", ics("x", at(5, 9), at(5, 10)))
    finally:
        radicale.up()
    # Up again, but the failure is remembered for 15 s: no request, the same error.
    clock.now += 14
    with pytest.raises(CalendarUnavailable, match="unreachable"):
        calendars.busy(code, at(10, 0), at(11, 0))
    clock.now += 2
    assert calendars.busy(code, at(10, 0), at(11, 0)) == []


def test_a_server_that_does_not_answer_costs_one_timeout_per_rep_per_15_s(
    radicale: Radicale,
) -> None:
    hung = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    url = f"http://127.0.0.1:{hung.getsockname()[1]}/"
    accepted: list[socket.socket] = []  # connections accepted; nothing ever answers them

    def accept() -> None:
        while True:
            try:
                accepted.append(hung.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        calendars = Calendars(
            CalendarConfig(url, "leadflow", "pw", {"ann-lee": "/leadflow/ann/"}, 0.5, 60)
        )
        # Six page views at once (the web server's threads): one of them waits out the
        # timeout, the others get its failure (caldav retries a first contact once without
        # credentials: two connections at most, not one per view).
        errors: list[str] = []

        def view() -> None:
            try:
                calendars.busy("ann-lee", *WEEK)
            except CalendarUnavailable as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=view) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(errors) == 6 and all("no answer within 0.5 s" in e for e in errors)
        assert 1 <= len(accepted) <= 2, len(accepted)
        tried = len(accepted)
        with pytest.raises(CalendarUnavailable, match="no answer"):
            calendars.busy("ann-lee", at(20, 0), at(21, 0))
        assert len(accepted) == tried  # cached: no second timeout
    finally:
        hung.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
        hung.close()
        for conn in accepted:
            conn.close()


def test_a_wrong_password_a_missing_calendar_and_a_forbidden_one(
    radicale: Radicale, rep: tuple[str, str]
) -> None:
    code, url = rep
    wrong = Calendars(config(radicale, {code: url}, password="Wr0ng-Pa55word"))
    with pytest.raises(CalendarUnavailable) as refused:
        wrong.busy(code, *WEEK)
    message = str(refused.value)
    assert "login refused (HTTP 401)" in message and not refused.value.permanent
    assert "Wr0ng-Pa55word" not in message and radicale.password not in message
    with pytest.raises(CalendarUnavailable, match="401"):
        wrong.check(code)

    calendars = Calendars(
        config(
            radicale,
            {
                code: url,
                "gone": "/leadflow/no-such-calendar/",
                "other": "/someone-else/calendar/",
                "home": "leadflow/",
            },
        )
    )
    assert calendars.check(code).startswith(f"{code}: CalDAV calendar ('{code}') at ")
    with pytest.raises(CalendarUnavailable, match="HTTP 404") as missing:
        calendars.busy("gone", *WEEK)
    assert missing.value.permanent and missing.value.status == 404
    with pytest.raises(CalendarUnavailable, match="404"):
        calendars.put("gone", "x", ics("x", at(5, 9), at(5, 10)))
    with pytest.raises(CalendarUnavailable, match="404"):
        calendars.check("gone")
    with pytest.raises(CalendarUnavailable, match="HTTP 403") as forbidden:
        calendars.busy("other", *WEEK)
    assert forbidden.value.permanent
    with pytest.raises(CalendarUnavailable, match="not a calendar"):
        calendars.check("home")
    with pytest.raises(CalendarUnavailable, match="no calendar is set") as unknown:
        calendars.busy("nobody", *WEEK)
    assert unknown.value.permanent and not calendars.has("nobody") and calendars.has(code)
    assert not Calendars(None).has(code)
    with pytest.raises(CalendarUnavailable, match="no CalDAV server"):
        Calendars(None).busy(code, *WEEK)


# --------------------------------------------------------------------------- configuration


def test_config_from_the_environment_and_errors_naming_the_variable() -> None:
    assert config_from_env({}) is None
    base = {
        "LEADFLOW_CALDAV_URL": "https://dav.example.com/remote.php/dav",
        "LEADFLOW_CALDAV_USERNAME": "leadflow",
        "LEADFLOW_CALDAV_PASSWORD": "hunter2-secret",
        "LEADFLOW_CALDAV_CALENDARS": "ann-lee=/ann/work/, bo-chen=https://other.example/bo/",
    }
    got = config_from_env(base)
    assert got is not None and got.password == "hunter2-secret"
    assert "hunter2-secret" not in repr(got)
    assert (got.timeout_seconds, got.cache_seconds) == (5.0, 60.0)
    assert got.calendar_url("ann-lee") == "https://dav.example.com/ann/work/"
    assert got.calendar_url("bo-chen") == "https://other.example/bo/"
    as_json = config_from_env(
        base
        | {
            "LEADFLOW_CALDAV_CALENDARS": '{"cy": "calendars/cy/work/"}',
            "LEADFLOW_CALDAV_TIMEOUT_SECONDS": "2.5",
            "LEADFLOW_CALDAV_CACHE_SECONDS": "0",
        }
    )
    assert as_json is not None and (as_json.timeout_seconds, as_json.cache_seconds) == (2.5, 0)
    assert as_json.calendar_url("cy") == "https://dav.example.com/remote.php/dav/calendars/cy/work/"
    bad = {
        "LEADFLOW_CALDAV_URL": "dav.example.com",
        "LEADFLOW_CALDAV_CALENDARS": "ann-lee",
        "LEADFLOW_CALDAV_TIMEOUT_SECONDS": "soon",
        "LEADFLOW_CALDAV_CACHE_SECONDS": "-1",
    }
    for variable, value in bad.items() | {
        ("LEADFLOW_CALDAV_CALENDARS", "[1, 2]"),
        ("LEADFLOW_CALDAV_CALENDARS", "{not json"),
        ("LEADFLOW_CALDAV_CALENDARS", "ann=ftp://files.example/ann"),
        ("LEADFLOW_CALDAV_CALENDARS", "ann=/a/,ann=/b/"),
        ("LEADFLOW_CALDAV_TIMEOUT_SECONDS", "0"),
    }:
        with pytest.raises(ConfigError) as problem:
            config_from_env(base | {variable: value})
        message = str(problem.value)
        assert message.startswith(variable) and "\n" not in message, message
        assert "hunter2-secret" not in message


def test_the_block_holds_the_config_and_with_calendars_adds_it_once(
    radicale: Radicale, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = CalDavCalendars(
        url=radicale.url,
        username=radicale.username,
        password=radicale.password,
        calendars={"ann-lee": "/leadflow/ann-lee/"},
    )
    assert block.channel == "caldav" and radicale.password not in repr(block)
    assert block.config().password == radicale.password
    assert CalDavCalendars.get_block_type_slug() == "leadflow-caldav-calendars"
    with pytest.raises(ValueError, match="ftp"):
        CalDavCalendars(url=radicale.url, calendars={"ann": "ftp://x/y"})
    assert outbox_tasks.resolve_notifiers(block) == [block]

    for name in ("LEADFLOW_CALDAV_URL", "LEADFLOW_CALDAV_BLOCK", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("leadflow.settings.configured_prefect_api", lambda: None)
    assert calendar_block() is None and outbox_tasks.with_calendars([]) == []
    monkeypatch.setenv("LEADFLOW_CALDAV_URL", radicale.url)
    monkeypatch.setenv("LEADFLOW_CALDAV_PASSWORD", "from-the-env")
    monkeypatch.setenv("LEADFLOW_CALDAV_CALENDARS", "bo-chen=/leadflow/bo-chen/")
    added = outbox_tasks.with_calendars([])
    assert [type(n) for n in added] == [CalDavCalendars]
    assert added[0].config().calendars == {"bo-chen": "/leadflow/bo-chen/"}
    assert added[0].config().password == "from-the-env"
    assert outbox_tasks.with_calendars([block]) == [block]  # one caldav notifier is enough


# --------------------------------------------------------------------------- the outbox


def calendar_message(key: str, rep: str, uid: str, action: str, body: str | None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "idempotency_key": [key],
            "kind": "calendar_event",
            "channel": "caldav",
            "recipient": rep,
            "body": [body],
            "payload": [{"rep": rep, "uid": uid, "action": action}],
        }
    )


def statuses(engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(t.outbox.c.idempotency_key, t.outbox.c.status)).all()
    return dict(rows)


def test_calendar_events_go_through_the_outbox_and_wait_while_the_server_is_down(
    radicale: Radicale, rep: tuple[str, str], sqlite_url: str
) -> None:
    code, url = rep
    engine = store.get_engine(sqlite_url)
    block = CalDavCalendars(
        url=radicale.url,
        username=radicale.username,
        password=radicale.password,
        calendars={code: url},
        timeout_seconds=2,
    )
    uid = "meeting-7@leadflow"
    booked = ics(uid, at(5, 10), at(5, 10.5))
    with engine.begin() as conn:
        outbox.enqueue(conn, calendar_message("put", code, uid, "put", booked), now=NOW)
        outbox.enqueue(conn, calendar_message("stray", "nobody", "u", "put", booked), now=NOW)
    report = send_due(engine, [block], 10, NOW)
    assert (report.sent, report.dead) == (1, 1)
    assert statuses(engine) == {"put": "sent", "stray": "dead"}
    assert [e[0] for e in radicale.events(url)] == [uid]

    # Cancelled while the server is down: put back untried, not dead; sent once it is up.
    with engine.begin() as conn:
        outbox.enqueue(conn, calendar_message("cancel", code, uid, "delete", None), now=NOW)
    radicale.down()
    try:
        down = send_due(engine, [block], 10, NOW)
        assert (down.sent, down.deferred, down.dead) == (0, 1, 0)
        assert statuses(engine)["cancel"] == "pending"
        assert "caldav" in down.breaker_opened
    finally:
        radicale.up()
    later = send_due(engine, [block], 10, NOW + BREAKER_COOL_OFF + timedelta(seconds=1))
    assert later.sent == 1 and statuses(engine)["cancel"] == "sent"
    assert radicale.events(url) == []


def test_a_stale_write_never_undoes_a_later_change(radicale: Radicale, rep: tuple[str, str]):
    """The outbox may retry an older write after a newer one (a put that failed, then the
    reschedule or the cancel went first): the calendar keeps the highest SEQUENCE."""
    code, url = rep
    calendars = Calendars(config(radicale, {code: url}))
    uid = "booking-7@leadflow.example"
    moved = ics(uid, at(6, 15), at(6, 15.5), "Moved").replace("SEQUENCE:0", "SEQUENCE:1")
    cancelled = moved.replace("SEQUENCE:1", "SEQUENCE:2").replace(
        "SUMMARY:Moved", "SUMMARY:Moved\r\nSTATUS:CANCELLED\r\nTRANSP:TRANSPARENT"
    )
    calendars.put(code, uid, moved)
    calendars.put(code, uid, ics(uid, at(5, 10), at(5, 10.5)))  # the first booking, late
    assert radicale.events(url) == [(uid, at(6, 15), at(6, 15.5), "Moved")]
    calendars.put(code, uid, cancelled)
    calendars.put(code, uid, moved)  # the reschedule, retried after the cancel
    assert calendars.busy(code, *WEEK) == []  # still cancelled: it takes no time


def test_doctor_checks_every_reps_calendar(radicale: Radicale, rep, monkeypatch) -> None:
    """``leadflow doctor``'s booking lines: each configured calendar answers, or a FAIL
    line naming the rep and what is wrong, with the fix; never the password."""
    from app import doctor

    code, url = rep
    monkeypatch.setenv("LEADFLOW_CALDAV_URL", radicale.url)
    monkeypatch.setenv("LEADFLOW_CALDAV_USERNAME", radicale.username)
    monkeypatch.setenv("LEADFLOW_CALDAV_PASSWORD", radicale.password)
    monkeypatch.setenv("LEADFLOW_CALDAV_CALENDARS", f"{code}={url},ghost={url}missing/")
    lines = [finding.line() for finding in doctor.booking(None)]
    assert lines[0].startswith("ok   booking: booking page on")
    assert any(line.startswith(f"ok   booking calendars: {code}") for line in lines)
    ghost = next(line for line in lines if "ghost" in line)
    assert ghost.startswith("FAIL booking calendars:") and "404" in ghost
    assert all(radicale.password not in line for line in lines)
