"""leadflow's HTTP endpoint (``leadflow serve``): what the outside world calls.

``POST /leads`` is the speed-to-lead door: a form's fields (JSON or form-encoded) with the
capture token (``Authorization: Bearer <token>``). The record is captured like a line of a
file (``leadflow.capture.posted``: mapping YAML, raw record, ledger, gate, quarantine); the
answer is 202 with the lead's id, or 422 with the fields and reasons it was quarantined
for, or 401 without a valid token (nothing written). Each captured lead is announced as a
Prefect event ``leadflow.lead.captured`` and handed to the lane (``tasks.lane``).

``/unsubscribe`` is where every nurture email's ``List-Unsubscribe`` header points. ``GET``
shows a page with a button (link scanners follow GETs; they must not unsubscribe anyone);
``POST`` (the button, or a mail client's RFC 8058 one-click ``List-Unsubscribe=One-Click``)
records an ``unsubscribe`` engagement event for the lead, once however often it is posted.
From then on the lead is suppressed: the next nurture tick ends its cadences and nothing is
sent to it again. A wrong or missing token is a 403 and writes nothing.

``/book/<token>`` is the booking page a routed lead's link opens: its owner's free slots in
the lead's time zone (server-side HTML, no JavaScript), each a button that posts the slot;
``/booking/<manage token>`` reschedules or cancels the meeting booked there. Every form
carries the page's signed form token; a link that is not valid is one 403 page whatever the
cause; the pages send strict security headers (``BOOKING_HEADERS``) and are rate-limited per
address and per link. ``POST /leads?wait=N`` (or ``Prefer: wait=N``) answers the routed
lead's ``booking_url`` when the lane made it within N seconds.

All are hardened (``Limits``, from ``LEADFLOW_SERVE_*`` environment variables): a body over
the size limit is refused while it is read (413), records with too many fields, too long a
value or too deep a nesting are refused before capture (413 / 422), a body that is not UTF-8
is a 400, and token buckets per client address, for the capture token, and for wrong tokens
per address answer 429 with ``Retry-After``. A refused post writes nothing; every post that
is let through ends inserted, merged or quarantined. Large records are captured by their
own writer, so that a small post never waits behind them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import cache
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from leadflow import links, store
from leadflow import tables as t
from leadflow.config import ConfigError
from leadflow.nurture import unsubscribe
from leadflow.settings import get_settings

if TYPE_CHECKING:
    from leadflow.booking.service import Booking

log = logging.getLogger(__name__)

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 4em auto">{body}</body></html>"""


def record_unsubscribe(database_url: str, lead_id: int, now: datetime | None = None) -> bool:
    """One ``unsubscribe`` event for the lead (key ``unsubscribe:<lead>``); False when it
    was already recorded or the lead does not exist."""
    events, leads = t.engagement_events, t.leads
    key = f"unsubscribe:{int(lead_id)}"
    with store.get_engine(database_url).begin() as conn:
        if not conn.execute(select(leads.c.id).where(leads.c.id == lead_id)).first():
            return False
        if conn.execute(select(events.c.id).where(events.c.event_key == key)).first():
            return False
        conn.execute(
            events.insert().values(
                lead_id=int(lead_id),
                event_type="unsubscribe",
                occurred_at=now or datetime.now(UTC),
                source="unsubscribe-link",
                event_key=key,
            )
        )
    return True


@dataclass
class Capture:
    """How ``POST /leads`` captures: the token, the mapping, and what happens to a
    captured lead (``hand_off`` gets the ids of every group of posted leads)."""

    token: str | None  # None: the endpoint answers 503 saying how to set one
    mapping_path: str
    source: str | None = None
    hand_off: Callable[[list[int]], Any] | None = None
    emit_events: bool = True
    missing_token: str = "no capture token is configured"
    checks: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # name -> field, why


def _fields(reasons: Sequence[str], checks: dict[str, tuple[str | None, str]]) -> list[dict]:
    """FastAPI-style error items: the field, the check it failed, and why the check exists
    (or the record's own detail, e.g. which fields could not be normalised)."""
    items = []
    for reason in reasons:
        name, _, detail = reason.partition(": ")
        where, why = checks.get(name, (None, ""))
        if name == "fields_are_valid" and detail:
            where = detail
        loc = ["body", *where.split(", ")] if where else ["body"]
        items.append({"loc": loc, "type": name, "msg": detail or why or name})
    return items


def reason_fields() -> dict[str, tuple[str | None, str]]:
    """Each captured-gate row check -> (the field it is about, why it exists), from
    ``suites/captured.yaml``."""
    from leadflow import quality

    spec = quality.load_suite("captured")
    out = {}
    for check in spec.rows:
        column = check.kwargs().get("column")
        column = {"identity": "email", "parse_error": None}.get(column, column)
        out[check.name] = (column, " ".join(check.why.split()))
    return out


def emit_captured(results: Sequence[Any], source: str) -> None:
    """One ``leadflow.lead.captured`` event per captured lead (ids only: no address)."""
    from prefect.events import emit_event

    for result in results:
        if result.lead_id is None:
            continue
        emit_event(
            event="leadflow.lead.captured",
            resource={"prefect.resource.id": f"leadflow.lead.{result.lead_id}"},
            payload={"status": result.status, "batch_id": result.batch_id, "source": source},
        )


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """What ``leadflow serve`` accepts. Each is read from ``LEADFLOW_SERVE_<NAME>`` (e.g.
    ``LEADFLOW_SERVE_MAX_BODY_BYTES``); a rate of 0 turns that rate limit off."""

    max_body_bytes: int = 64 * 1024  # a POST /leads body (Content-Length is checked first)
    max_fields: int = 200  # keys and list items of one record, at any depth
    max_value_bytes: int = 8 * 1024  # one key or text value, in UTF-8
    max_depth: int = 8  # objects and lists inside each other
    client_rate: float = 20.0  # per client address, requests per second ...
    client_burst: int = 40  # ... and at once (posts with the capture token count per token)
    token_rate: float = 100.0  # posts with the capture token, all clients together
    token_burst: int = 1000
    auth_failures_per_minute: float = 5.0  # wrong or missing tokens per address (also the burst)

    @classmethod
    def from_env(cls, environ: Any = None) -> Limits:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = f"LEADFLOW_SERVE_{spec.name.upper()}"
            raw = str(environ.get(name) or "").strip()
            if not raw:
                continue
            try:
                number = float(raw)
            except ValueError:
                number = math.nan
            whole = spec.type == "int"
            rate = spec.name.endswith(("_rate", "_per_minute"))
            if not math.isfinite(number) or number < (0 if rate else 1):
                floor = "a number >= 0 (0: no limit)" if rate else "a number >= 1"
                raise ConfigError(f"environment variable {name}={raw!r} must be {floor}")
            if whole and number != int(number):
                raise ConfigError(f"environment variable {name}={raw!r} must be a whole number")
            values[spec.name] = int(number) if whole else number
        return cls(**values)


class Refused(Exception):
    """A request answered without capturing anything: the status and a one-line reason
    (never a posted value)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=self.status, headers=self.headers)


class Buckets:
    """Token buckets by key (a client address, a token): ``rate`` tokens a second, at most
    ``burst`` saved up. Thread-safe. At most ``max_keys`` keys are remembered (the least
    recently seen is forgotten first, and starts full again)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst = float(rate), max(1.0, float(burst))
        self.max_keys, self.clock = max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when
        self._lock = threading.Lock()

    def wait(self, key: str, *, take: bool = True) -> float:
        """0.0 when a request may go now (taking a token unless ``take`` is False), else
        the seconds until one may."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < 1:
                return (1 - tokens) / self.rate
            if take:
                self._buckets[key] = (tokens - 1, now)
                self._buckets.move_to_end(key)
                if len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            return 0.0


def _too_many(wait: float, what: str) -> Refused:
    seconds = max(1, math.ceil(wait))
    return Refused(429, f"too many {what}; retry after {seconds} s", {"Retry-After": str(seconds)})


class Gate:
    """The rate limits of one app: per client address, per capture token, and wrong
    tokens per address."""

    def __init__(self, limits: Limits) -> None:
        self.clients = Buckets(limits.client_rate, limits.client_burst)
        self.tokens = Buckets(limits.token_rate, limits.token_burst)
        per_minute = limits.auth_failures_per_minute
        self.failures = Buckets(per_minute / 60, per_minute)

    def client(self, address: str) -> Refused | None:
        wait = self.clients.wait(address)
        return _too_many(wait, "requests from this address") if wait else None

    def token(self, token: str) -> Refused | None:
        wait = self.tokens.wait(token)
        return _too_many(wait, "posts with this token") if wait else None

    def locked_out(self, address: str) -> Refused | None:
        """An address that used up its wrong-token attempts hears 429 whatever it sends next
        (a right token answered otherwise would tell it apart from the wrong ones)."""
        wait = self.failures.wait(address, take=False)
        return _too_many(wait, "wrong tokens from this address") if wait else None

    def failed(self, address: str) -> None:
        self.failures.wait(address)


def client_address(request: Request) -> str:
    """The remote address (uvicorn puts a trusted proxy's ``X-Forwarded-For`` there)."""
    return request.client.host if request.client else "unknown"


# --------------------------------------------------------------------------- bodies

_SPECIAL = re.compile(r'[\[\]{}"\\]')
_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,39}")


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "body is not UTF-8") from None


def deeper_than(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests objects and lists more than ``limit`` deep, found with a
    flat scan (no recursion, linear in the text), so that the parser never recurses deeper.
    Brackets inside strings do not count; malformed text is the parser's business."""
    depth, in_string, escaped = 0, False, -1
    for match in _SPECIAL.finditer(text):
        char, at = match.group(), match.start()
        if in_string:
            if at == escaped:
                continue
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _named(key: str) -> str:
    """A key in a message only when it looks like a field name (never an address)."""
    return f"field {key!r}" if _SAFE_NAME.fullmatch(key) and "@" not in key else "a field"


def check_record(value: Any, limits: Limits) -> int:
    """Refuse a parsed record over the limits, or holding text no store can keep (unpaired
    surrogates, NUL characters); returns how many fields (keys and items) it has. Walks the
    record with a stack, not recursion."""
    count = 0
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, key = stack.pop()
        if isinstance(node, dict | list):
            if depth + 1 > limits.max_depth:
                raise Refused(422, f"JSON nested deeper than {limits.max_depth} levels")
            count += len(node)
            if count > limits.max_fields:
                raise Refused(413, f"more than {limits.max_fields} fields")
            if isinstance(node, dict):
                for name, item in node.items():
                    _check_text(str(name), limits, "a field name")
                    stack.append((item, depth + 1, str(name)))
            else:
                stack.extend((item, depth + 1, key) for item in node)
        elif isinstance(node, str):
            _check_text(node, limits, _named(key) if key else "the body")
    return count


def _check_text(text: str, limits: Limits, what: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise Refused(400, f"{what} is not valid Unicode (an unpaired surrogate escape)") from None
    if size > limits.max_value_bytes:
        raise Refused(413, f"{what} is longer than {limits.max_value_bytes} bytes")
    _no_nul(text, what)


def _no_nul(text: str, what: str) -> None:
    """NUL cannot be stored in PostgreSQL text: one would fail its whole group's write."""
    if "\x00" in text:
        raise Refused(422, f"{what} holds a NUL character")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("a number too large for a float")
    return number


@dataclass
class Parsed:
    """A posted body as a record for capture (``error``: why JSON could not be parsed; the
    text is then captured as it came, to be quarantined as malformed)."""

    record: Any
    size: int  # bytes
    fields: int  # keys and list items, at any depth
    error: str | None = None


def parse_json(raw: bytes, limits: Limits) -> Parsed:
    """A JSON body, parsed safely: UTF-8 (else 400), nesting scanned before parsing (422),
    no NaN / Infinity, then the field limits. Text that is not JSON comes back as text."""
    text = _utf8(raw)
    if deeper_than(text, limits.max_depth):
        raise Refused(422, f"JSON nested deeper than {limits.max_depth} levels")
    try:
        record = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        error = f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except (ValueError, RecursionError) as exc:  # a number too long or not finite
        error = f"invalid JSON: {str(exc).split(':')[0][:80]}"
    else:
        return Parsed(record, len(raw), check_record(record, limits))
    _no_nul(text, "the body")
    return Parsed(text, len(raw), 0, error)


def parse_form(raw: bytes, limits: Limits) -> Parsed:
    """A form-encoded body: UTF-8 (also its %-escapes), at most ``max_fields`` fields."""
    text = _utf8(raw)
    try:
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=limits.max_fields,
        )
    except UnicodeDecodeError:
        raise Refused(400, "body is not UTF-8") from None
    except ValueError:
        raise Refused(413, f"more than {limits.max_fields} fields") from None
    record = dict(pairs)
    return Parsed(record, len(raw), check_record(record, limits))


async def parse_multipart(request: Request, raw: bytes, limits: Limits) -> Parsed:
    """A multipart body (already read within the limit): text fields only, files dropped."""
    from starlette.exceptions import HTTPException

    request._body = raw  # what starlette's form parser reads instead of the stream
    try:
        form = await request.form(
            max_files=limits.max_fields,
            max_fields=limits.max_fields,
            max_part_size=limits.max_value_bytes,
        )
    except HTTPException as exc:
        detail = str(exc.detail)
        if detail.startswith("Too many"):
            raise Refused(413, f"more than {limits.max_fields} fields") from None
        if "maximum size" in detail:
            raise Refused(413, f"a field is longer than {limits.max_value_bytes} bytes") from None
        raise Refused(400, "malformed multipart body") from None
    except Exception:  # python-multipart's own parse errors
        raise Refused(400, "malformed multipart body") from None
    try:
        record = {key: value for key, value in form.items() if isinstance(value, str)}
    finally:
        await form.close()
    return Parsed(record, len(raw), check_record(record, limits))


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over ``limit``: from
    Content-Length before reading, else while reading; never more than ``limit + 1`` bytes
    are kept."""
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise Refused(400, "Content-Length is not a number")
        if len(declared) > 18 or int(declared) > limit:
            raise Refused(413, f"body larger than {limit} bytes")
    body = bytearray()
    stream = request.stream()
    try:
        async for chunk in stream:
            body += chunk[: limit + 1 - len(body)]
            if len(body) > limit:
                raise Refused(413, f"body larger than {limit} bytes")
    except ClientDisconnect:
        raise Refused(400, "the body ended early (the client went away)") from None
    finally:
        await stream.aclose()
    return bytes(body)


async def read_record(request: Request, limits: Limits) -> Parsed:
    """The posted fields: a JSON object, or form fields, within the limits; parsing runs in
    a worker thread, off the event loop. JSON that does not parse comes back as its text,
    so that capture quarantines it as malformed (and the ledger counts it)."""
    raw = await read_body(request, limits.max_body_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await parse_multipart(request, raw, limits)
    if kind == "application/x-www-form-urlencoded":
        return await run_in_threadpool(parse_form, raw, limits)
    return await run_in_threadpool(parse_json, raw, limits)


# --------------------------------------------------------------------------- booking pages

BOOKING_BODY_BYTES = 4 * 1024  # a booking form posts three short fields
BOOKING_PER_TOKEN_PER_MINUTE = 30.0  # requests with one link's token (also the burst)
BOOKING_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
# The time zones the page's zone picker offers (the lead's own is added when missing).
COMMON_ZONES = (
    "UTC",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "Europe/Istanbul",
    "Africa/Johannesburg",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Auckland",
)
_TEMPLATES = Path(__file__).parent / "templates"


@cache
def templates() -> Environment:
    """The booking pages' Jinja2 templates (``app/templates/booking``), every value escaped."""
    return Environment(
        loader=FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def local_time(moment: datetime, zone: str) -> str:
    """``Tuesday 3 November 2026, 17:00 (JST)``: a meeting's time as the lead reads it."""
    local = moment.astimezone(ZoneInfo(zone))
    return f"{local:%A} {local.day} {local:%B %Y}, {local:%H:%M} ({local.tzname()})"


def slot_days(
    days: Sequence[tuple[Any, Sequence[Any]]], zone: str, owner: str | None, name: Callable
) -> list[dict[str, Any]]:
    """The slots as the page lists them: per local day its label, and per slot its form key,
    its local start time and, for another rep's slot (the pool's), that rep's first name."""
    tz = ZoneInfo(zone)
    return [
        {
            "label": f"{day:%A} {day.day} {day:%B}",
            "slots": [
                {
                    "key": slot.key,
                    "time": f"{slot.start.astimezone(tz):%H:%M}",
                    "with": None if slot.rep == owner else name(slot.rep),
                }
                for slot in slots
            ],
        }
        for day, slots in days
    ]


def same_origin(request: Request) -> bool:
    """Whether a post may come from this site: no ``Origin``, or one naming this host (as
    the request reached it, or as ``leadflow.links.public_url()`` names it). ``Origin: null``
    is what a browser sends for a page with ``Referrer-Policy: no-referrer``: it passes
    unless ``Sec-Fetch-Site`` says the post came from another site (the form token, which
    only the page carries, is what stops a forged post)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin.strip() == "null":
        return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    parts = urlsplit(origin.strip())
    if parts.netloc and parts.netloc.lower() == request.headers.get("host", "").lower():
        return True
    try:
        public = urlsplit(links.public_url())
    except ConfigError:
        return False
    return (parts.scheme, parts.netloc.lower()) == (public.scheme, public.netloc.lower())


class BookingPages:
    """What the booking pages answer (``/book/<token>``, ``/booking/<manage token>``): the
    core's ``Booking`` (made on the first request when not given), the rate limits (per
    address, per link token, wrong tokens per address), and the pages rendered with the
    security headers. Every method that touches the store runs in a worker thread."""

    def __init__(
        self,
        database_url: str,
        booking: Booking | None,
        gate: Gate,
        clock: Callable[[], datetime],
        on_change: Callable[[list[int]], Any] | None = None,
    ) -> None:
        self.database_url, self.gate, self.clock = database_url, gate, clock
        # What a booking, a move or a cancel hands its lead to: the lane (``leadflow serve``),
        # which sends the lead's invitations at once instead of at the next outbox run.
        self.on_change = on_change
        per_minute = BOOKING_PER_TOKEN_PER_MINUTE
        self.per_token = Buckets(per_minute / 60, per_minute)
        self._booking = booking
        self._lock = threading.Lock()

    def booking(self) -> Booking:
        """The core's booking, made once: the reps' CalDAV calendars from ``calendar_config``
        (none when that config is wrong: logged, the pages offer working hours)."""
        if self._booking is not None:
            return self._booking
        with self._lock:
            if self._booking is None:
                from blocks.calendar import calendar_config
                from leadflow.booking.service import Booking
                from leadflow.calendars import Calendars

                try:
                    config = calendar_config()
                except (ConfigError, ValueError) as exc:
                    log.error("booking: CalDAV calendars not used: %s", exc)
                    config = None
                self._booking = Booking(self.database_url, Calendars(config))
            return self._booking

    # ----------------------------------------------------------------- answers

    def render(
        self, name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
    ) -> HTMLResponse:
        html = templates().get_template(f"booking/{name}.html").render(**context)
        return HTMLResponse(
            html, status_code=status, headers={**BOOKING_HEADERS, **(headers or {})}
        )

    def message(
        self, title: str, text: str, status: int, headers: dict[str, str] | None = None
    ) -> HTMLResponse:
        return self.render("message", status, headers, title=title, text=text)

    def invalid(self) -> HTMLResponse:
        """The one answer for every link that is not valid (wrong, expired, unknown)."""
        return self.message("Link not valid", "This link is not valid.", 403)

    def redirect(self, path: str) -> RedirectResponse:
        """Post/Redirect/Get: the page that shows what the post did."""
        return RedirectResponse(path, status_code=303, headers=BOOKING_HEADERS)

    def admit(self, request: Request, token: str) -> HTMLResponse | None:
        """The 429 page when the address, or the link's token, is over its rate, or the
        address used up its wrong tokens."""
        address = client_address(request)
        refused = (
            self.gate.client(address) or self.gate.locked_out(address) or self._token_rate(token)
        )
        if refused is None:
            return None
        return self.message(
            "Too many requests", "Please try again in a little while.", 429, refused.headers
        )

    def _token_rate(self, token: str) -> Refused | None:
        wait = self.per_token.wait(token[:200])
        return _too_many(wait, "requests with this link") if wait else None

    def failed(self, request: Request) -> HTMLResponse:
        """A token that is not valid: counted against the address, then the 403 page."""
        self.gate.failed(client_address(request))
        return self.invalid()

    def guarded(self, work: Callable[[], Response]) -> Response:
        """``work``'s page, or 503 when the store or the link secret cannot be reached (never
        a 500: nothing here depends on what the lead typed)."""
        try:
            if not self.booking().rules.enabled:  # rules/booking.yaml: enabled: false
                return self.message("Not available", "Booking is not available.", 404)
            return work()
        except ConfigError as exc:  # no Public Site block, or its Prefect API is down
            log.error("booking: links cannot be checked: %s", exc)
            return self.message("Try again later", "Booking is unavailable right now.", 503)
        except SQLAlchemyError as exc:
            log.error("booking: the database did not answer: %s", type(exc).__name__)
            return self.message(
                "Try again",
                "Booking is busy right now; please try again.",
                503,
                {"Retry-After": "5"},
            )
        except Exception as exc:
            where = exc.__traceback__
            while where is not None and where.tb_next is not None:
                where = where.tb_next
            line = f"{where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else "?"
            log.error("booking: page failed: %s at %s", type(exc).__name__, line)
            return self.message("Try again", "Something went wrong; please try again.", 503)

    async def read_form(self, request: Request) -> dict[str, str] | HTMLResponse:
        """A booking form's fields: from this site (else 403), form-encoded (415), within
        ``BOOKING_BODY_BYTES`` (413), UTF-8 (400)."""
        if not same_origin(request):
            return self.message("Not allowed", "This form was sent from another site.", 403)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return self.message("Not a form", "Please use the buttons on the page.", 415)
        try:
            raw = await read_body(request, BOOKING_BODY_BYTES)
            text = _utf8(raw)
            pairs = parse_qsl(
                text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=20
            )
        except Refused as refused:
            return self.message("Not accepted", "This form could not be read.", refused.status)
        except (UnicodeDecodeError, ValueError):
            return self.message("Not accepted", "This form could not be read.", 400)
        return dict(pairs)

    # ----------------------------------------------------------------- /book/<token>

    def book_page(
        self, view: Any, asked: str | None, status: int = 200, taken: bool = False
    ) -> HTMLResponse:
        """The slots page (or the meeting booked through it) of a valid link's ``view``."""
        from leadflow.booking import tokens

        booking = self.booking()
        owner = view.owner.rep.id if view.owner else None
        rep_first = view.first_name(owner) if owner else "your contact"
        meeting = None
        if view.meeting is not None:
            manage = tokens.manage_token(view.meeting.manage_id)
            meeting = {
                "when": local_time(view.meeting.starts_at, view.zone),
                "with": view.first_name(view.meeting.rep_code),
                "manage": f"/booking/{manage}",
            }
        offer = view.offer
        return self.render(
            "book",
            status,
            title="Book a call",
            lead_first=view.lead.first_name,
            rep_first=rep_first,
            pool=bool(offer and offer.pool),
            meeting=meeting,
            taken=taken,
            unchecked=view.unchecked,
            zone=view.zone,
            zones=sorted({*COMMON_ZONES, view.zone}),
            action=f"/book/{view.token}",
            form=tokens.form_token(view.token),
            tz=asked if asked == view.zone else "",  # a zone the lead picked, not junk
            days=slot_days(view.days(), view.zone, owner, view.first_name),
            horizon=booking.rules.days,
        )

    def closed(self) -> HTMLResponse:
        return self.message(
            "Booking closed", "This link no longer books a call; we will be in touch.", 410
        )

    def show(self, request: Request, token: str) -> HTMLResponse:
        """``GET /book/<token>``: the lead's slots in its zone (``?tz=`` picks another)."""
        asked = request.query_params.get("tz") or None
        view = self.booking().view(token, asked, self.clock())
        if view is None:
            return self.failed(request)
        if view.meeting is None and view.offer is None:
            return self.closed()
        return self.book_page(view, asked)

    def book(self, request: Request, token: str, form: dict[str, str]) -> Response:
        """``POST /book/<token>``: book the posted slot, then show the page again (303)."""
        from leadflow.booking import tokens

        if not tokens.form_ok(token, form.get("form")):
            return self.invalid()
        asked = form.get("tz") or None
        done = self.booking().book(token, form.get("slot", ""), form["form"], asked, self.clock())
        if done.kind == "booked" and not done.replayed:
            self.changed(done.meeting.lead_id)
        if done.kind == "booked":
            picked = asked if done.view is not None and done.view.zone == asked else None
            return self.redirect(
                f"/book/{token}" + (f"?{urlencode({'tz': picked})}" if picked else "")
            )
        if done.kind == "taken" and done.view is not None:
            return self.book_page(done.view, asked, 409, taken=True)
        if done.kind == "closed":
            return self.closed()
        return self.failed(request)

    def changed(self, lead_id: int) -> None:
        """Hand the lead whose meeting changed to ``on_change`` (never failing the page)."""
        if self.on_change is None:
            return
        try:
            self.on_change([int(lead_id)])
        except Exception as exc:  # the next outbox run sends the messages all the same
            log.warning("booking: lead not handed to the lane: %s", type(exc).__name__)

    # ----------------------------------------------------------------- /booking/<manage>

    def manage_page(
        self, token: str, found: tuple, status: int = 200, taken: bool = False
    ) -> HTMLResponse:
        """A booked meeting with its cancel button and the times it can move to."""
        from leadflow.booking import slots, tokens
        from leadflow.booking.service import lead_zone

        booking = self.booking()
        meeting, lead, rep, _ = found
        zone = meeting.lead_zone or lead_zone(lead, rep)
        first = rep.rep.name.split(" ")[0] or rep.rep.id
        days: list[dict[str, Any]] = []
        unchecked = False
        if meeting.status == "booked":
            offer = booking.reschedule_offer(meeting, rep, self.clock())
            unchecked = bool(offer.unread)
            others = [s for s in offer.slots if s.start != meeting.starts_at]
            days = slot_days(slots.by_day(others, ZoneInfo(zone)), zone, rep.rep.id, str)
        return self.render(
            "manage",
            status,
            title="Your call",
            rep_first=first,
            when=local_time(meeting.starts_at, zone),
            cancelled=meeting.status != "booked",
            taken=taken,
            unchecked=unchecked,
            zone=zone,
            action=f"/booking/{token}/reschedule",
            cancel=f"/booking/{token}/cancel",
            form=tokens.form_token(token),
            tz="",
            days=days,
            horizon=booking.rules.days,
        )

    def manage(self, request: Request, token: str) -> HTMLResponse:
        """``GET /booking/<manage token>``."""
        found = self.booking().managed(token)
        return self.failed(request) if found is None else self.manage_page(token, found)

    def change(self, request: Request, token: str, form: dict[str, str], what: str) -> Response:
        """``POST /booking/<manage token>/cancel`` or ``/reschedule`` (``slot``)."""
        from leadflow.booking import tokens

        if not tokens.form_ok(token, form.get("form")):
            return self.invalid()
        booking, now = self.booking(), self.clock()
        if what == "cancel":
            done = booking.cancel(token, form["form"], now)
        else:
            done = booking.reschedule(token, form.get("slot", ""), form["form"], now)
        if done.kind in ("cancelled", "booked"):
            if not done.replayed and done.meeting is not None:
                self.changed(done.meeting.lead_id)
            return self.redirect(f"/booking/{token}")
        if done.kind == "forbidden":
            return self.failed(request)
        found = booking.managed(token)
        if found is None:
            return self.failed(request)
        if done.kind == "taken":
            return self.manage_page(token, found, 409, taken=True)
        return self.manage_page(token, found, 410)


def _add_booking(app: FastAPI, pages: BookingPages) -> None:
    """Mount the booking pages: ``GET``/``POST /book/<token>`` (the lead's slots, book one)
    and ``GET /booking/<manage token>`` with its ``cancel`` and ``reschedule`` posts."""

    @app.get("/book/{token}", response_class=HTMLResponse)
    def book_page(token: str, request: Request) -> Response:
        refused = pages.admit(request, token)
        return refused or pages.guarded(lambda: pages.show(request, token))

    @app.post("/book/{token}", response_class=HTMLResponse)
    async def book_post(token: str, request: Request) -> Response:
        if refused := pages.admit(request, token):
            return refused
        form = await pages.read_form(request)
        if isinstance(form, HTMLResponse):
            return form
        return await run_in_threadpool(pages.guarded, lambda: pages.book(request, token, form))

    @app.get("/booking/{token}", response_class=HTMLResponse)
    def manage_page(token: str, request: Request) -> Response:
        refused = pages.admit(request, token)
        return refused or pages.guarded(lambda: pages.manage(request, token))

    async def change(token: str, request: Request, what: str) -> Response:
        if refused := pages.admit(request, token):
            return refused
        form = await pages.read_form(request)
        if isinstance(form, HTMLResponse):
            return form
        return await run_in_threadpool(
            pages.guarded, lambda: pages.change(request, token, form, what)
        )

    @app.post("/booking/{token}/cancel", response_class=HTMLResponse)
    async def cancel_post(token: str, request: Request) -> Response:
        return await change(token, request, "cancel")

    @app.post("/booking/{token}/reschedule", response_class=HTMLResponse)
    async def reschedule_post(token: str, request: Request) -> Response:
        return await change(token, request, "reschedule")


# --------------------------------------------------------------------------- the app

# A record with more fields than this, or a body larger, is captured by a writer of its own
# (one record per group: capture costs ~2.5 ms a distinct field), so small posts never wait
# behind it; at most LARGE_WAITING of them are queued, more hear 503 with Retry-After.
LARGE_FIELDS = 50
LARGE_BYTES = 16 * 1024
LARGE_WAITING = 8

_TOKEN = re.compile(r"[0-9a-f]{32}")
_LEAD = re.compile(r"[0-9]{1,18}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    database_url: str | None = None,
    capture: Capture | None = None,
    limits: Limits | None = None,
    booking: Booking | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """The HTTP app: ``POST /leads`` (with ``capture``), the unsubscribe and booking pages,
    ``/healthz``. ``booking``: the booking pages' core (default: made on the first request
    over ``database_url`` and the CalDAV calendars configured); ``clock``: the time the
    booking pages and ``POST /leads?wait=`` use (tests pass a fixed one)."""
    database_url = database_url or get_settings().database_url
    limits = limits or Limits.from_env()
    clock = clock or _utc_now
    gate = Gate(limits)
    app = FastAPI(title="leadflow", docs_url=None, redoc_url=None)
    app.state.limits = limits
    if capture is not None:
        _add_capture(app, database_url, capture, limits, gate, clock)
    on_change = capture.hand_off if capture is not None else None
    _add_booking(app, BookingPages(database_url, booking, gate, clock, on_change))

    def page(
        title: str, body: str, status: int = 200, headers: dict[str, str] | None = None
    ) -> HTMLResponse:
        return HTMLResponse(
            _PAGE.format(title=escape(title), body=body), status_code=status, headers=headers
        )

    def link(request: Request) -> int | HTMLResponse:
        """The lead of a valid unsubscribe link, or the page refusing it: 429 over the rate
        limits, 400 for a link missing its lead or token, 403 for a wrong token."""
        address = client_address(request)
        refused = gate.client(address) or gate.locked_out(address)
        if refused is not None:
            return page("Too many requests", "<p>Please try again later.</p>", 429, refused.headers)
        lead, token = request.query_params.get("lead"), request.query_params.get("t")
        if lead is None or token is None or not _LEAD.fullmatch(lead):
            return page("Link not valid", "<p>This unsubscribe link is not complete.</p>", 400)
        try:
            honoured = _TOKEN.fullmatch(token) is not None and unsubscribe.valid(int(lead), token)
        except ConfigError as exc:  # no Public Site block, or its Prefect API is down
            log.error("unsubscribe: links cannot be checked: %s", exc)
            return page("Try again later", "<p>Unsubscribing is unavailable right now.</p>", 503)
        if not honoured:
            gate.failed(address)
            return page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 403)
        return int(lead)

    @app.get("/unsubscribe", response_class=HTMLResponse)
    def confirm(request: Request) -> HTMLResponse:
        lead = link(request)
        if isinstance(lead, HTMLResponse):
            return lead
        token = request.query_params["t"]
        action = escape(f"/unsubscribe?lead={lead}&t={token}", quote=True)
        return page(
            "Unsubscribe",
            "<p>Stop all emails from us?</p>"
            f'<form method="post" action="{action}"><button type="submit">Unsubscribe</button></form>',
        )

    @app.post("/unsubscribe", response_class=HTMLResponse)
    def unsubscribe_now(request: Request) -> HTMLResponse:
        lead = link(request)
        if isinstance(lead, HTMLResponse):
            return lead
        record_unsubscribe(database_url, lead)
        return page("Unsubscribed", "<p>You are unsubscribed. You will get no more emails.</p>")

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _add_capture(
    app: FastAPI,
    database_url: str,
    capture: Capture,
    limits: Limits,
    gate: Gate,
    clock: Callable[[], datetime] = _utc_now,
) -> None:
    """Mount ``POST /leads``: an authorised post is parsed, written by a capture writer and
    answered 202 (captured) or 422 (quarantined, with the checks it failed); a client that
    asks to wait (``?wait=N`` or ``Prefer: wait=N``) hears the routed lead's booking link."""
    from leadflow.capture.rules import load_mapping

    mapping, version = load_mapping(capture.mapping_path)
    source = capture.source or mapping.source or "web-form"
    checks = capture.checks or reason_fields()
    writers = _Writers.start(database_url, mapping, version, source, capture)

    @app.post("/leads", status_code=202)
    async def post_lead(request: Request) -> JSONResponse:
        """Capture one posted lead: 503 without a token, the refusal, or the writer's answer."""
        if capture.token is None:
            return JSONResponse({"detail": capture.missing_token}, status_code=503)
        try:
            parsed = await _accept(request, capture, limits, gate)
            wait, preferred = wait_seconds(request)
        except Refused as refused:
            if refused.status not in (401, 429):
                log.info("POST /leads refused (%d): %s", refused.status, refused.detail)
            return refused.response()
        posted = await writers.write(parsed)
        if isinstance(posted, JSONResponse):
            return posted
        if wait <= 0 or posted.status == "quarantined" or posted.lead_id is None:
            return _posted_response(posted, parsed, checks)
        if posted.status != "inserted":
            # A post merged into a lead that exists: whoever posted it may not be that lead,
            # and its link opens that lead's meeting. The link goes to the lead's own email.
            extra = {"booking": "by email"}
        else:
            extra = await booking_link(database_url, posted.lead_id, wait, clock)
        answer = _posted_response(posted, parsed, checks, extra)
        if preferred:
            answer.headers["Preference-Applied"] = f"wait={wait:g}"
        return answer


@dataclass
class _Writers:
    """The capture's writers: ``small`` batches posts together, ``large`` writes each large
    post in a group of its own; ``waiting_large`` counts the large posts queued (touched on
    the event loop only)."""

    small: Any
    large: Any
    waiting_large: int = 0

    @classmethod
    def start(
        cls, database_url: str, mapping: Any, version: Any, source: str, capture: Capture
    ) -> _Writers:
        """Both writers, each telling ``_on_captured`` what it wrote."""
        from leadflow.capture.posted import Batcher

        captured = _on_captured(capture, source)
        small = Batcher(database_url, mapping, version, source=source, on_captured=captured)
        large = Batcher(
            database_url, mapping, version, source=source, max_group=1, on_captured=captured
        )
        return cls(small, large)

    async def write(self, parsed: Parsed) -> Any:
        """Write the record and return what was posted, or the 503 saying to post again (too
        many large posts waiting, or the store unavailable)."""
        is_large = parsed.fields > LARGE_FIELDS or parsed.size > LARGE_BYTES
        if is_large and self.waiting_large >= LARGE_WAITING:
            return JSONResponse(
                {"detail": "too many large posts are being captured; post again"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        writer = self.large if is_large else self.small
        self.waiting_large += is_large
        try:
            # shielded: a cancelled request must not cancel the writer's future (the record
            # is written all the same, and the writer sets every future of its group)
            return await asyncio.shield(asyncio.wrap_future(writer.submit(parsed.record)))
        except Exception:
            return JSONResponse(
                {"detail": "the lead store is unavailable; nothing was captured, post again"},
                status_code=503,
            )
        finally:
            self.waiting_large -= is_large


def _on_captured(capture: Capture, source: str) -> Callable[[list[Any]], None]:
    """What a writer calls with each group it wrote: emit the captured events (if the capture
    does) and hand the captured leads' ids off."""

    def captured(results: list[Any]) -> None:
        """Emit and hand off one written group."""
        if capture.emit_events:
            emit_captured(results, source)
        ids = sorted({r.lead_id for r in results if r.lead_id is not None})
        if ids and capture.hand_off is not None:
            capture.hand_off(ids)

    return captured


MAX_WAIT_SECONDS = 10.0  # POST /leads?wait=: the longest a client may wait for its link
WAIT_POLL_SECONDS = 0.1


def wait_seconds(request: Request) -> tuple[float, bool]:
    """How long ``POST /leads`` waits for the lead's booking link, and whether the client
    asked in a ``Prefer: wait=N`` header (RFC 7240: more than 10 is taken as 10, a value
    that is not a number is ignored). ``?wait=N`` wins: a number from 0 to 10, else 400."""
    raw = request.query_params.get("wait")
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 <= value <= MAX_WAIT_SECONDS):
            raise Refused(400, f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}")
        return value, False
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            name, _, value = preference.split(";")[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                continue
            if math.isfinite(seconds) and seconds >= 0:
                return min(seconds, MAX_WAIT_SECONDS), True
    return 0.0, False


# A lead in one of these after the lane will get no booking link: stop waiting for one.
NOT_ROUTED = ("nurturing", "disqualified", "quarantined")


async def booking_link(
    database_url: str, lead_id: int, wait: float, clock: Callable[[], datetime]
) -> dict[str, str]:
    """``{"booking_url": ...}`` as soon as the lane has made the lead's booking link
    (looked for every 100 ms, off the event loop), else ``{"booking": "pending"}`` after
    ``wait`` seconds (``"unavailable"`` when links cannot be signed here)."""
    from leadflow.booking import tokens
    from leadflow.booking.store import newest_link

    def look() -> tuple[str | None, str | None]:
        with store.get_engine(database_url).connect() as conn:
            status = conn.execute(
                select(t.leads.c.status).where(t.leads.c.id == int(lead_id))
            ).scalar()
            return newest_link(conn, lead_id, clock()), status

    deadline = time.monotonic() + wait
    while True:
        try:
            token, status = await run_in_threadpool(look)
            if token is not None:
                return {"booking_url": tokens.book_url(token)}
            if status in NOT_ROUTED:  # scored into nurture, disqualified: no rep to meet
                return {"booking": "not offered"}
        except ConfigError as exc:
            log.error("POST /leads: booking links cannot be signed: %s", exc)
            return {"booking": "unavailable"}
        except SQLAlchemyError as exc:
            log.warning("POST /leads: booking link not read: %s", type(exc).__name__)
        left = deadline - time.monotonic()
        if left <= 0:
            return {"booking": "pending"}
        await asyncio.sleep(min(WAIT_POLL_SECONDS, left))


def _authorised(request: Request, capture: Capture) -> bool:
    """The request carries the capture token (``Authorization: Bearer`` or
    ``X-Leadflow-Token``)."""
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer":
        token = request.headers.get("x-leadflow-token", "")
    return bool(token) and hmac.compare_digest(token.encode(), capture.token.encode())


async def _accept(request: Request, capture: Capture, limits: Limits, gate: Gate) -> Parsed:
    """The record of an authorised post, or ``Refused`` saying why not."""
    address = client_address(request)
    if refused := gate.locked_out(address):
        raise refused
    if not _authorised(request, capture):
        if refused := gate.client(address):
            raise refused
        gate.failed(address)
        raise Refused(
            401,
            "missing or wrong capture token (Authorization: Bearer <token>)",
            {"WWW-Authenticate": "Bearer"},
        )
    if refused := gate.token("capture"):
        raise refused
    return await read_record(request, limits)


def _posted_response(
    posted: Any,
    parsed: Parsed,
    checks: dict[str, tuple[str | None, str]],
    extra: dict[str, str] | None = None,
) -> JSONResponse:
    """202 with the record's reference and outcome (and ``extra``: the booking link); 422
    when it was quarantined, with the checks it failed (a malformed body's own parse error in
    place of the generic one)."""
    body = {"record": f"{posted.batch_id}/{posted.record_no}", **posted.as_dict(), **(extra or {})}
    if posted.status == "quarantined":
        body["detail"] = _fields(posted.reasons, checks)
        if parsed.error:
            for item in body["detail"]:
                if item["type"] == "record_is_well_formed":
                    item["msg"] = parsed.error
        return JSONResponse(body, status_code=422)
    return JSONResponse(body, status_code=202)
