"""The demo's booking step: a few routed leads open the link routing mailed them and book
their first call through the real pages (``app.web``, in process), and one more lead posts a
slot that was just taken."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

from sqlalchemy import select

from leadflow import store
from leadflow import tables as t
from leadflow.settings import get_settings

BUTTON = re.compile(r'name="slot" value="([^"]+)">(\d\d:\d\d)')
FORM = re.compile(r'name="form" value="([0-9a-f]{32})"')
BOOKED = re.compile(r"You(?:&#39;|')re booked: ([^<]+) with ([^<.]+)")


def _links(leads: int) -> tuple[list[tuple[int, str, int]], tuple[int, str, int] | None]:
    """(lead id, booking token, owner id) of routed leads with a link: one lead each of the
    first ``leads`` owners, and another lead of the first owner (for the clash), if any."""
    from leadflow.booking import tokens

    links, rows_of = t.booking_links, t.leads
    with store.get_engine(get_settings().database_url).connect() as conn:
        rows = conn.execute(
            select(rows_of.c.id, links.c.token_id, links.c.expires_at, rows_of.c.owner_rep_id)
            .join(links, links.c.lead_id == rows_of.c.id)
            .where(rows_of.c.status == "routed")
            .order_by(rows_of.c.owner_rep_id, rows_of.c.id)
        ).all()
    found = [
        (int(lead), tokens.book_token(tid, at if at.tzinfo else at.replace(tzinfo=UTC)), int(rep))
        for lead, tid, at, rep in rows
    ]
    firsts: dict[int, tuple[int, str, int]] = {}
    for row in found:
        firsts.setdefault(row[2], row)
    chosen = list(firsts.values())[:leads]
    taken = {row[0] for row in chosen}
    clash = next((r for r in found if chosen and r[2] == chosen[0][2] and r[0] not in taken), None)
    return chosen, clash


def book_a_few(leads: int = 3) -> dict[str, Any]:
    """``leads`` leads book the first slot their page offers; then a lead of the same owner
    as the first posts that slot too (it hears 409 and sees the next slots)."""
    from fastapi.testclient import TestClient

    from app.web import create_app

    client = TestClient(create_app())
    found, other = _links(leads)
    if not found:
        return {"booked": 0, "examples": [], "clash": None}
    booked, examples, first_slot = 0, [], None
    for lead, token, owner in found:
        page = client.get(f"/book/{token}").text
        slot, form = BUTTON.search(page), FORM.search(page)
        if not slot or not form:
            continue
        answer = client.post(
            f"/book/{token}", data={"slot": slot.group(1), "form": form.group(1), "tz": ""}
        )
        confirmed = BOOKED.search(answer.text)
        if confirmed:
            booked += 1
            examples.append(f"lead #{lead}: {confirmed.group(1)} with {confirmed.group(2)}")
            first_slot = first_slot or (owner, slot.group(1))
    clash = None
    if other is not None and first_slot is not None and other[2] == first_slot[0]:
        lead, token, _ = other
        page = client.get(f"/book/{token}").text
        form = FORM.search(page)
        answer = client.post(
            f"/book/{token}",
            data={"slot": first_slot[1], "form": form.group(1) if form else "", "tz": ""},
        )
        clash = {"lead": lead, "status": answer.status_code}
    return {"booked": booked, "examples": examples, "clash": clash}


def describe_booking(data: dict[str, Any]) -> list[str]:
    lines = [f"booking: {data.get('booked', 0)} lead(s) booked their first call from their link"]
    lines += [f"  {example}" for example in data.get("examples", [])]
    clash = data.get("clash")
    if clash:
        lines.append(
            f"  lead #{clash['lead']} posted a slot just booked by another lead: "
            f"{clash['status']} ({'just taken, next slots shown' if clash['status'] == 409 else 'unexpected'})"
        )
    return lines
