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

Both are hardened (``Limits``, from ``LEADFLOW_SERVE_*`` environment variables): a body over
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
from html import escape
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from leadflow import store
from leadflow import tables as t
from leadflow.config import ConfigError
from leadflow.nurture import unsubscribe
from leadflow.settings import get_settings

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


# --------------------------------------------------------------------------- the app

# A record with more fields than this, or a body larger, is captured by a writer of its own
# (one record per group: capture costs ~2.5 ms a distinct field), so small posts never wait
# behind it; at most LARGE_WAITING of them are queued, more hear 503 with Retry-After.
LARGE_FIELDS = 50
LARGE_BYTES = 16 * 1024
LARGE_WAITING = 8

_TOKEN = re.compile(r"[0-9a-f]{32}")
_LEAD = re.compile(r"[0-9]{1,18}")


def create_app(
    database_url: str | None = None,
    capture: Capture | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    database_url = database_url or get_settings().database_url
    limits = limits or Limits.from_env()
    gate = Gate(limits)
    app = FastAPI(title="leadflow", docs_url=None, redoc_url=None)
    app.state.limits = limits
    if capture is not None:
        _add_capture(app, database_url, capture, limits, gate)

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
    app: FastAPI, database_url: str, capture: Capture, limits: Limits, gate: Gate
) -> None:
    """Mount ``POST /leads``: an authorised post is parsed, written by a capture writer and
    answered 202 (captured) or 422 (quarantined, with the checks it failed)."""
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
        except Refused as refused:
            if refused.status not in (401, 429):
                log.info("POST /leads refused (%d): %s", refused.status, refused.detail)
            return refused.response()
        posted = await writers.write(parsed)
        if isinstance(posted, JSONResponse):
            return posted
        return _posted_response(posted, parsed, checks)


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
    posted: Any, parsed: Parsed, checks: dict[str, tuple[str | None, str]]
) -> JSONResponse:
    """202 with the record's reference and outcome; 422 when it was quarantined, with the
    checks it failed (a malformed body's own parse error in place of the generic one)."""
    body = {"record": f"{posted.batch_id}/{posted.record_no}", **posted.as_dict()}
    if posted.status == "quarantined":
        body["detail"] = _fields(posted.reasons, checks)
        if parsed.error:
            for item in body["detail"]:
                if item["type"] == "record_is_well_formed":
                    item["msg"] = parsed.error
        return JSONResponse(body, status_code=422)
    return JSONResponse(body, status_code=202)
