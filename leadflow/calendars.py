"""Reps' real calendars over CalDAV: busy times for the booking page, booked meetings written
back.

``Calendars`` wraps the ``caldav`` client (pinned 2.0.1, on ``requests``) for the calendars of
``CalendarConfig``: one CalDAV server (Radicale, Nextcloud, Baikal, iCloud, ...), one login,
one calendar per rep code. The booking page asks ``busy`` for a rep's busy times over the
days it offers; the outbox sender (channel ``caldav``, kind ``calendar_event``) calls ``put``
and ``delete`` for a booked or cancelled meeting; ``leadflow doctor`` calls ``check``.

Every failure is ``CalendarUnavailable``: one line naming the rep and the calendar (address
masked, never credentials), with the HTTP ``status`` when the server answered and whether it
is ``permanent`` (no calendar at that URL, 403 forbidden, the rep has no calendar
configured): such a message can never be delivered as it is, while an unreachable server or
a refused login may work later.

Busy answers are cached per (rep, window rounded out to whole hours) for ``cache_seconds``,
and a failure per rep for ``min(cache_seconds, 15 s)``: page views of a rep whose server is
down cost one timeout per 15 s, not one each. All calls are thread-safe (the web server's
worker threads share one ``Calendars``); calls for one rep are serialized (its client and
its cache fill), calls for different reps run side by side. No Prefect here.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import quote, urljoin, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import caldav
import icalendar
import requests
from caldav.elements import dav
from caldav.lib import error as dav_error

from leadflow.business_time import Interval
from leadflow.config import ConfigError
from leadflow.quarantine import masked

FAILURE_CACHE_SECONDS = 15.0  # a down server: one timeout per rep per this long, at most
ICS_TYPE = 'text/calendar; charset="utf-8"'
_URL = re.compile(r"^https?://[^/\s]+", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_HOUR = timedelta(hours=1)

__all__ = [
    "CalendarConfig",
    "CalendarUnavailable",
    "Calendars",
    "Interval",
    "calendar_problem",
    "config_from_env",
]


@dataclass(frozen=True)
class CalendarConfig:
    """Where the reps' calendars are: the server's base ``url``, one login, and each rep's
    calendar (``calendars``: rep code -> an absolute URL, or a path resolved against ``url``
    as a browser resolves a link: ``/ann/work/`` from the host's root, ``ann/work/`` below
    ``url``)."""

    url: str
    username: str | None
    password: str | None = field(repr=False)  # plain text here; the block keeps a SecretStr
    calendars: dict[str, str]
    timeout_seconds: float = 5.0
    cache_seconds: float = 60.0

    def calendar_url(self, rep_code: str) -> str:
        """The absolute URL of ``rep_code``'s calendar (KeyError when it has none)."""
        base = self.url if self.url.endswith("/") else self.url + "/"
        return urljoin(base, self.calendars[rep_code])


class CalendarUnavailable(Exception):
    """A rep's calendar could not be read or written. ``status``: the HTTP status when the
    server answered (None: unreachable, timed out, not configured); ``permanent``: retrying
    the same call cannot help (404 or 403 calendar, no calendar configured for the rep)."""

    def __init__(
        self, message: str, *, rep: str = "", status: int | None = None, permanent: bool = False
    ) -> None:
        super().__init__(message)
        self.rep = rep
        self.status = status
        self.permanent = permanent

    def again(self) -> CalendarUnavailable:
        """A fresh copy (a cached failure raised again gets its own traceback)."""
        return CalendarUnavailable(
            str(self), rep=self.rep, status=self.status, permanent=self.permanent
        )


def address(url: str) -> str:
    """A URL fit for a message: no user, password, query or fragment; addresses masked."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return masked(f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path)


class _Rep:
    """One rep's calendar: its client (made on first use), the status of the last answer,
    and the lock that serializes everything done with them."""

    def __init__(self, code: str, url: str, config: CalendarConfig) -> None:
        self.code = code
        self.url = url
        self.config = config
        self.lock = threading.Lock()
        self.last_status: int | None = None
        self._client: caldav.DAVClient | None = None

    def calendar(self) -> caldav.Calendar:
        if self._client is None:
            client = caldav.DAVClient(
                self.config.url,
                username=self.config.username,
                password=self.config.password,
                timeout=self.config.timeout_seconds,
            )
            client.session.hooks["response"].append(self._answered)
            self._client = client
        self.last_status = None
        return self._client.calendar(url=self.url)

    def _answered(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_status = response.status_code

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def failure(self, exc: BaseException) -> CalendarUnavailable:
        """``exc`` (from ``requests`` or ``caldav``) as one line naming the calendar."""
        status = self.last_status if isinstance(exc, dav_error.DAVError) else None
        permanent = False
        if isinstance(exc, requests.Timeout):
            what = f"no answer within {self.config.timeout_seconds:g} s"
        elif isinstance(exc, requests.RequestException | OSError):
            what = f"unreachable ({type(exc).__name__})"
        elif isinstance(exc, dav_error.AuthorizationError) and status == 403:
            what, permanent = "forbidden (HTTP 403): the login may not use this calendar", True
        elif isinstance(exc, dav_error.AuthorizationError):
            status = status or 401
            what = f"login refused (HTTP {status}): check the username and password"
        elif isinstance(exc, dav_error.NotFoundError) and status == 404:
            what, permanent = "no calendar at this URL (HTTP 404)", True
        elif status is not None and status >= 400:
            # 408, 423, 425, 429: wait and try again; any other 4xx never works as it is
            transient = status in (408, 423, 425, 429)
            what, permanent = (
                f"the server answered HTTP {status}",
                400 <= status < 500 and not transient,
            )
        else:
            what = f"the answer is not CalDAV ({type(exc).__name__})"
        return CalendarUnavailable(
            f"CalDAV calendar of {self.code!r} at {address(self.url)}: {what}",
            rep=self.code,
            status=status,
            permanent=permanent,
        )


class Calendars:
    """The reps' calendars of ``config`` (None: no CalDAV configured; every rep has none).
    ``clock`` (seconds, monotonic) times the caches; tests pass their own."""

    def __init__(
        self, config: CalendarConfig | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self._reps = {
            code: _Rep(code, config.calendar_url(code), config)
            for code in (config.calendars if config else {})
        }
        self._lock = threading.Lock()  # guards the two caches below
        self._busy: dict[tuple[Any, ...], tuple[float, list[Interval]]] = {}
        self._failed: dict[str, tuple[float, CalendarUnavailable]] = {}

    def has(self, rep_code: str) -> bool:
        """Whether ``rep_code`` has a calendar configured (not whether it answers)."""
        return rep_code in self._reps

    def _rep(self, rep_code: str) -> _Rep:
        rep = self._reps.get(rep_code)
        if rep is not None:
            return rep
        why = "no CalDAV server is configured" if self.config is None else "no calendar is set"
        raise CalendarUnavailable(
            f"CalDAV calendar of {rep_code!r}: {why} for this rep "
            "(LEADFLOW_CALDAV_CALENDARS, or the calendars of the CalDAV block)",
            rep=rep_code,
            permanent=True,
        )

    # ------------------------------------------------------------------ busy times

    def busy(
        self,
        rep_code: str,
        start: datetime,
        end: datetime,
        *,
        tz: str | tzinfo | None = None,
    ) -> list[Interval]:
        """The rep's busy intervals overlapping ``[start, end)``: UTC, sorted, each whole
        (not clipped to the window), overlapping and touching ones merged among the events
        found in the window rounded out to whole hours.

        Busy is every VEVENT the server finds in the window (a CalDAV time-range search,
        recurrences expanded), except those marked free (``TRANSP:TRANSPARENT``) or
        cancelled (``STATUS:CANCELLED``); an event with no length is not busy. All-day
        events (``DATE`` values) are busy from midnight to midnight and floating times are
        wall-clock times, both in ``tz`` (the rep's time zone) when given, else in the
        calendar's ``X-WR-TIMEZONE`` when it has one, else in UTC.

        Answers are cached per (rep, window rounded out to whole hours, tz) for
        ``cache_seconds``; ``put`` and ``delete`` forget the rep's. A failure raises
        ``CalendarUnavailable`` and is raised again, without asking the server, for
        ``min(cache_seconds, 15 s)``."""
        start, end = _aware(start, "start"), _aware(end, "end")
        rep = self._rep(rep_code)
        if end <= start:
            return []
        zone = _zone(tz)
        window = (_floor_hour(start), _ceil_hour(end))
        key = (rep_code, *window, str(zone) if zone else None)
        found = self._cached(key)
        if found is None:
            with rep.lock:  # one fill per rep at a time; the others wait and find it cached
                found = self._cached(key)
                if found is None:
                    found = self._fill(rep, key, window, zone)
        return [span for span in found if span[0] < end and span[1] > start]

    def _cached(self, key: tuple[Any, ...]) -> list[Interval] | None:
        now = self.clock()
        with self._lock:
            failed = self._failed.get(key[0])
            if failed is not None and failed[0] > now:
                raise failed[1].again()
            hit = self._busy.get(key)
        return hit[1] if hit is not None and hit[0] > now else None

    def _fill(
        self, rep: _Rep, key: tuple[Any, ...], window: Interval, zone: tzinfo | None
    ) -> list[Interval]:
        assert self.config is not None  # a rep exists only with a config
        try:
            found = self._search(rep, *window, zone)
        except Exception as exc:
            failure = rep.failure(exc)
            hold = min(self.config.cache_seconds, FAILURE_CACHE_SECONDS)
            if hold > 0:
                with self._lock:
                    self._failed[rep.code] = (self.clock() + hold, failure)
            raise failure from exc
        if self.config.cache_seconds > 0:
            now = self.clock()
            with self._lock:
                if len(self._busy) > 512:  # drop what has expired: memory stays bounded
                    self._busy = {k: v for k, v in self._busy.items() if v[0] > now}
                self._busy[key] = (now + self.config.cache_seconds, found)
                self._failed.pop(rep.code, None)
        return found

    def _search(
        self, rep: _Rep, start: datetime, end: datetime, zone: tzinfo | None
    ) -> list[Interval]:
        calendar = rep.calendar()
        spans = []
        for item in calendar.search(start=start, end=end, event=True, expand=True):
            vcalendar = item.icalendar_instance
            local = zone or _zone(str(vcalendar.get("X-WR-TIMEZONE", "")) or None) or UTC
            for component in vcalendar.walk("VEVENT"):
                span = _span(component, local)
                if span is not None:
                    spans.append(span)
        return merge(spans)

    def _forget(self, rep_code: str) -> None:
        with self._lock:
            self._busy = {k: v for k, v in self._busy.items() if k[0] != rep_code}
            self._failed.pop(rep_code, None)

    # ------------------------------------------------------------------ writing

    def put(self, rep_code: str, uid: str, ics: str) -> None:
        """Create or replace the event ``uid`` on the rep's calendar, with ``ics`` (a
        VCALENDAR whose VEVENT has that UID) exactly as given: it is PUT at the href the
        ``caldav`` library would give it (``<calendar>/<uid>.ics``), so putting it twice
        leaves one event; an event with that UID stored elsewhere (made by another client)
        is replaced where it is. Forgets the rep's cached busy times."""
        if uid not in _uids(ics):
            raise ValueError("the ICS has no VEVENT with the UID it is put under")
        rep = self._rep(rep_code)
        with rep.lock:
            try:
                self._put(rep, uid, ics)
            except Exception as exc:
                raise rep.failure(exc) from exc
        self._forget(rep_code)

    def _put(self, rep: _Rep, uid: str, ics: str) -> None:
        calendar = rep.calendar()
        href = str(_href(calendar, uid))
        stored = calendar.client.request(href, "GET")
        if stored.status == 200 and _sequence(stored.raw) > _sequence(ics):
            return  # a later change of the meeting is there already: this one is stale
        answer = calendar.client.put(href, ics, {"Content-Type": ICS_TYPE})
        if answer.status in (409, 412):  # the UID is taken elsewhere, or no such calendar
            existing = _by_uid(rep, calendar, uid)
            if existing is not None:
                answer = calendar.client.put(str(existing.url), ics, {"Content-Type": ICS_TYPE})
        if answer.status not in (200, 201, 204):
            rep.last_status = answer.status
            raise dav_error.PutError(f"HTTP {answer.status}")

    def delete(self, rep_code: str, uid: str) -> None:
        """Remove the event ``uid`` from the rep's calendar; one already gone is fine (a
        missing calendar is not). Forgets the rep's cached busy times."""
        rep = self._rep(rep_code)
        with rep.lock:
            try:
                calendar = rep.calendar()
                answer = calendar.client.delete(str(_href(calendar, uid)))
                if answer.status == 404:  # not at our href: stored elsewhere, or gone
                    existing = _by_uid(rep, calendar, uid)
                    answer = calendar.client.delete(str(existing.url)) if existing else answer
                if answer.status not in (200, 204, 404):
                    rep.last_status = answer.status
                    raise dav_error.DeleteError(f"HTTP {answer.status}")
            except Exception as exc:
                raise rep.failure(exc) from exc
        self._forget(rep_code)

    def check(self, rep_code: str) -> str:
        """For ``leadflow doctor``: the server answers, the login is accepted and the rep's
        calendar exists as a calendar (one PROPFIND). Returns one line saying so; raises
        ``CalendarUnavailable`` otherwise."""
        rep = self._rep(rep_code)
        with rep.lock:
            try:
                props = rep.calendar().get_properties([dav.DisplayName(), dav.ResourceType()])
            except Exception as exc:
                raise rep.failure(exc) from exc
        kinds = props.get(dav.ResourceType.tag) or []
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(str(kind).endswith("}calendar") for kind in kinds):
            raise CalendarUnavailable(
                f"CalDAV calendar of {rep_code!r} at {address(rep.url)}: the collection there "
                "is not a calendar",
                rep=rep_code,
                status=207,
                permanent=True,
            )
        name = props.get(dav.DisplayName.tag) or ""
        named = f" ({masked(name)!r})" if name else ""
        return f"{rep_code}: CalDAV calendar{named} at {address(rep.url)} answers"

    def close(self) -> None:
        """Close the clients' connections (the next call opens them again)."""
        for rep in self._reps.values():
            with rep.lock:
                rep.close()


# --------------------------------------------------------------------------- helpers


def _aware(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return moment.astimezone(UTC)


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(moment: datetime) -> datetime:
    floor = _floor_hour(moment)
    return floor if floor == moment else floor + _HOUR


def _zone(tz: str | tzinfo | None) -> tzinfo | None:
    if tz is None or isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _utc(value: date | datetime, local: tzinfo) -> datetime:
    """A DTSTART/DTEND value in UTC: a date is its midnight and a floating time its wall
    clock, both in ``local``."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=local)
    return value.astimezone(UTC)


def _span(component: icalendar.Component, local: tzinfo) -> Interval | None:
    """The busy interval of one VEVENT, or None when it does not make the rep busy."""
    if str(component.get("TRANSP", "OPAQUE")).upper() == "TRANSPARENT":
        return None
    if str(component.get("STATUS", "")).upper() == "CANCELLED":
        return None
    try:
        start, end = _utc(component.start, local), _utc(component.end, local)
    except (ValueError, KeyError, TypeError):  # no DTSTART, or values icalendar refuses
        return None
    return (start, end) if end > start else None


def merge(spans: list[Interval]) -> list[Interval]:
    """Sorted, with overlapping and touching intervals joined."""
    out: list[Interval] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _uids(ics: str) -> set[str]:
    try:
        parsed = icalendar.Calendar.from_ical(ics)
    except ValueError:
        return set()
    return {str(c.get("UID")) for c in parsed.walk("VEVENT") if c.get("UID")}


def _sequence(ics: str) -> int:
    """The VEVENT's SEQUENCE (0 when it has none; -1 for text that is no calendar)."""
    try:
        parsed = icalendar.Calendar.from_ical(ics)
        return max((int(c.get("SEQUENCE", 0)) for c in parsed.walk("VEVENT")), default=0)
    except (ValueError, TypeError):
        return -1


def _href(calendar: caldav.Calendar, uid: str) -> Any:
    """Where ``caldav``'s ``save_event`` puts the event ``uid`` (its ``_generate_url``)."""
    return calendar.url.join(quote(uid.replace("/", "%2F")) + ".ics")


def _by_uid(rep: _Rep, calendar: caldav.Calendar, uid: str) -> Any:
    """The stored event with this UID wherever it is, or None; a missing calendar (404 to
    the search itself) raises."""
    try:
        return calendar.event_by_uid(uid)
    except dav_error.NotFoundError:
        if rep.last_status == 404:
            raise
        return None


# --------------------------------------------------------------------------- configuration


def calendar_problem(rep_code: str, value: Any) -> str | None:
    """What is wrong with one entry of ``calendars`` (None: nothing): a rep code, and an
    http(s) URL or a path."""
    if not isinstance(rep_code, str) or not rep_code.strip():
        return "a rep code is empty"
    if not isinstance(value, str) or not value.strip():
        return f"rep {rep_code!r} has no calendar URL"
    if _SCHEME.match(value) and not _URL.match(value):
        return f"rep {rep_code!r}: {address(value)!r} is neither an http(s) URL nor a path"
    return None


def _calendars(raw: str | None, variable: str) -> dict[str, str]:
    """``ann-lee=/ann/work/,bo-chen=https://...`` or a JSON object."""
    if raw is None:
        return {}
    if raw.lstrip().startswith("{"):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{variable} is not valid JSON: {exc.msg}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{variable} must be a JSON object of rep code -> calendar URL")
        pairs = list(parsed.items())
    else:
        pairs = []
        for item in filter(None, (part.strip() for part in raw.split(","))):
            code, sign, value = item.partition("=")
            if not sign:
                raise ConfigError(f"{variable}: {masked(item)!r} is not REP=URL")
            pairs.append((code.strip(), value.strip()))
    out: dict[str, str] = {}
    for code, value in pairs:
        problem = calendar_problem(code, value)
        if problem is None and code in out:
            problem = f"rep {code!r} is given twice"
        if problem:
            raise ConfigError(f"{variable}: {problem}")
        out[code.strip()] = value.strip()
    return out


def _seconds(env: Mapping[str, str], variable: str, default: float, *, zero: bool) -> float:
    raw = env.get(variable) or None
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "more than 0"
        raise ConfigError(f"{variable}={raw!r} is not a number of seconds ({least})")
    return value


def config_from_env(environ: Mapping[str, str] | None = None) -> CalendarConfig | None:
    """The CalDAV config from ``LEADFLOW_CALDAV_*`` (``environ``: default ``os.environ``);
    None when ``LEADFLOW_CALDAV_URL`` is unset. ``LEADFLOW_CALDAV_CALENDARS`` is
    ``rep=URL,...`` or a JSON object; ``_TIMEOUT_SECONDS`` (default 5) and
    ``_CACHE_SECONDS`` (default 60; 0: no cache). A bad value raises ``ConfigError``
    naming the variable (never echoing the password)."""
    env = os.environ if environ is None else environ
    url = (env.get("LEADFLOW_CALDAV_URL") or "").strip()
    if not url:
        return None
    if not _URL.match(url):
        raise ConfigError(f"LEADFLOW_CALDAV_URL={address(url)!r} is not an http:// or https:// URL")
    return CalendarConfig(
        url=url,
        username=env.get("LEADFLOW_CALDAV_USERNAME") or None,
        password=env.get("LEADFLOW_CALDAV_PASSWORD") or None,
        calendars=_calendars(
            env.get("LEADFLOW_CALDAV_CALENDARS") or None, "LEADFLOW_CALDAV_CALENDARS"
        ),
        timeout_seconds=_seconds(env, "LEADFLOW_CALDAV_TIMEOUT_SECONDS", 5.0, zero=False),
        cache_seconds=_seconds(env, "LEADFLOW_CALDAV_CACHE_SECONDS", 60.0, zero=True),
    )
