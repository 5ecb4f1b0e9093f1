"""leadflow's HTTP endpoint (``leadflow serve``): what the outside world calls.

``/unsubscribe`` is where every nurture email's ``List-Unsubscribe`` header points. ``GET``
shows a page with a button (link scanners follow GETs; they must not unsubscribe anyone);
``POST`` (the button, or a mail client's RFC 8058 one-click ``List-Unsubscribe=One-Click``)
records an ``unsubscribe`` engagement event for the lead, once however often it is posted.
From then on the lead is suppressed: the next nurture tick ends its cadences and nothing is
sent to it again. A wrong or missing token is a 403 and writes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from leadflow import store, unsubscribe
from leadflow import tables as t
from leadflow.settings import get_settings

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


def create_app(database_url: str | None = None) -> FastAPI:
    database_url = database_url or get_settings().database_url
    app = FastAPI(title="leadflow", docs_url=None, redoc_url=None)

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
