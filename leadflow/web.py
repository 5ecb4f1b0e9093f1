"""leadflow's HTTP endpoint (``leadflow serve``): what the outside world calls.

``POST /leads`` is the speed-to-lead door: a form's fields (JSON or form-encoded) with the
capture token (``Authorization: Bearer <token>``). The record is captured like a line of a
file (``tasks.capture.posted``: mapping YAML, raw record, ledger, gate, quarantine); the
answer is 202 with the lead's id, or 422 with the fields and reasons it was quarantined
for, or 401 without a valid token (nothing written). Each captured lead is announced as a
Prefect event ``leadflow.lead.captured`` and handed to the lane (``tasks.lane``).

``/unsubscribe`` is where every nurture email's ``List-Unsubscribe`` header points. ``GET``
shows a page with a button (link scanners follow GETs; they must not unsubscribe anyone);
``POST`` (the button, or a mail client's RFC 8058 one-click ``List-Unsubscribe=One-Click``)
records an ``unsubscribe`` engagement event for the lead, once however often it is posted.
From then on the lead is suppressed: the next nurture tick ends its cadences and nothing is
sent to it again. A wrong or missing token is a 403 and writes nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import select

from leadflow import store, unsubscribe
from leadflow import tables as t
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
    from tasks import quality

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


def create_app(database_url: str | None = None, capture: Capture | None = None) -> FastAPI:
    database_url = database_url or get_settings().database_url
    app = FastAPI(title="leadflow", docs_url=None, redoc_url=None)
    if capture is not None:
        _add_capture(app, database_url, capture)

    def page(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(_PAGE.format(title=escape(title), body=body), status_code=status)

    @app.get("/unsubscribe", response_class=HTMLResponse)
    def confirm(lead: int = Query(...), t: str = Query(...)) -> HTMLResponse:
        if not unsubscribe.valid(lead, t):
            return page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 403)
        action = escape(f"/unsubscribe?lead={lead}&t={t}", quote=True)
        return page(
            "Unsubscribe",
            "<p>Stop all emails from us?</p>"
            f'<form method="post" action="{action}"><button type="submit">Unsubscribe</button></form>',
        )

    @app.post("/unsubscribe", response_class=HTMLResponse)
    def unsubscribe_now(lead: int = Query(...), t: str = Query(...)) -> HTMLResponse:
        if not unsubscribe.valid(lead, t):
            return page("Link not valid", "<p>This unsubscribe link is not valid.</p>", 403)
        record_unsubscribe(database_url, lead)
        return page("Unsubscribed", "<p>You are unsubscribed. You will get no more emails.</p>")

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _add_capture(app: FastAPI, database_url: str, capture: Capture) -> None:
    from leadflow.mapping import load_mapping
    from tasks.capture.posted import Batcher

    mapping, version = load_mapping(capture.mapping_path)
    source = capture.source or mapping.source or "web-form"
    checks = capture.checks or reason_fields()

    def captured(results: list[Any]) -> None:
        if capture.emit_events:
            emit_captured(results, source)
        ids = sorted({r.lead_id for r in results if r.lead_id is not None})
        if ids and capture.hand_off is not None:
            capture.hand_off(ids)

    batcher = Batcher(database_url, mapping, version, source=source, on_captured=captured)

    def authorised(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer":
            token = request.headers.get("x-leadflow-token", "")
        return bool(token) and hmac.compare_digest(token.encode(), capture.token.encode())

    @app.post("/leads", status_code=202)
    async def post_lead(request: Request) -> JSONResponse:
        if capture.token is None:
            return JSONResponse({"detail": capture.missing_token}, status_code=503)
        if not authorised(request):
            return JSONResponse(
                {"detail": "missing or wrong capture token (Authorization: Bearer <token>)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        record = await _record(request)
        try:
            posted = await asyncio.wrap_future(batcher.submit(record))
        except Exception:
            return JSONResponse(
                {"detail": "the lead store is unavailable; nothing was captured, post again"},
                status_code=503,
            )
        body = {"record": f"{posted.batch_id}/{posted.record_no}", **posted.as_dict()}
        if posted.status == "quarantined":
            body["detail"] = _fields(posted.reasons, checks)
            return JSONResponse(body, status_code=422)
        return JSONResponse(body, status_code=202)


async def _record(request: Request) -> Any:
    """The posted fields: a JSON object, or form fields. Anything else is returned as the
    text received, so that capture quarantines it as malformed (and the ledger counts it)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        return {key: value for key, value in form.items() if isinstance(value, str)}
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")  # quarantined: "a JSON str, not an object"
