"""Booking's reads and its links (the database side; no decisions here).

``create_links`` runs in routing's transaction (``leadflow/routing/hop.py``): a routed lead's
link is made once and reused while it has more than half its life left, so a rerun, a
reassignment and the lead's email all carry the same link.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, and_, select

from leadflow import store
from leadflow import tables as t
from leadflow.booking import tokens
from leadflow.business_time import Interval
from leadflow.lifecycle import Status
from leadflow.routing.rules import Rep

log = logging.getLogger(__name__)

# A lead in one of these has an owner who takes meetings.
BOOKABLE = (Status.ROUTED.value, Status.ACCEPTED.value, Status.QUALIFIED.value)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- links


def create_links(
    conn: Connection, lead_ids: Iterable[int], now: datetime, life: timedelta
) -> dict[int, str]:
    """Each lead's booking token: its newest link when that has more than half of ``life``
    left, else a new one (inserted here, in the caller's transaction)."""
    ids = sorted({int(i) for i in lead_ids})
    if not ids:
        return {}
    now = _utc(now)
    links = t.booking_links
    keep_after = now + life / 2
    found: dict[int, str] = {}
    for row in conn.execute(
        select(links.c.lead_id, links.c.token_id, links.c.expires_at)
        .where(links.c.lead_id.in_(ids), links.c.expires_at > keep_after)
        .order_by(links.c.lead_id, links.c.expires_at)
    ):
        found[int(row.lead_id)] = tokens.book_token(row.token_id, _utc(row.expires_at))
    fresh = [i for i in ids if i not in found]
    if fresh:
        expires = now + life
        token_ids = [tokens.new_id() for _ in fresh]
        store.bulk_insert(
            conn,
            links,
            pd.DataFrame(
                {
                    "lead_id": fresh,
                    "token_id": token_ids,
                    "created_at": pd.Timestamp(now),
                    "expires_at": pd.Timestamp(expires),
                }
            ),
        )
        found.update(
            {i: tokens.book_token(tid, expires) for i, tid in zip(fresh, token_ids, strict=True)}
        )
    return found


@dataclass(frozen=True)
class Link:
    id: int
    lead_id: int
    expires_at: datetime


def link(conn: Connection, token_id: str) -> Link | None:
    links = t.booking_links
    row = conn.execute(
        select(links.c.id, links.c.lead_id, links.c.expires_at).where(links.c.token_id == token_id)
    ).first()
    return None if row is None else Link(int(row.id), int(row.lead_id), _utc(row.expires_at))


def newest_link(conn: Connection, lead_id: int, now: datetime) -> str | None:
    """The lead's newest unexpired booking token (``POST /leads`` answers with it)."""
    links = t.booking_links
    row = conn.execute(
        select(links.c.token_id, links.c.expires_at)
        .where(links.c.lead_id == int(lead_id), links.c.expires_at > _utc(now))
        .order_by(links.c.expires_at.desc())
        .limit(1)
    ).first()
    return None if row is None else tokens.book_token(row.token_id, _utc(row.expires_at))


# --------------------------------------------------------------------------- the lead


@dataclass(frozen=True)
class Lead:
    id: int
    status: str
    owner_id: int | None
    first_name: str | None
    last_name: str | None
    email: str | None
    company: str | None
    country: str | None
    timezone: str | None
    attributes: dict[str, Any]
    assignment_id: int | None
    pool: str | None

    @property
    def name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p) or f"lead #{self.id}"


def lead(conn: Connection, lead_id: int) -> Lead | None:
    """The lead as booking needs it, with its open assignment."""
    leads, a = t.leads, t.assignments
    row = conn.execute(
        select(
            leads.c.id,
            leads.c.status,
            leads.c.owner_rep_id,
            leads.c.first_name,
            leads.c.last_name,
            leads.c.email,
            leads.c.company,
            leads.c.country,
            leads.c.timezone,
            leads.c.attributes,
            a.c.id.label("assignment_id"),
            a.c.pool,
        )
        .select_from(
            leads.outerjoin(
                a,
                and_(
                    a.c.lead_id == leads.c.id,
                    a.c.released_at.is_(None),
                    a.c.rep_id == leads.c.owner_rep_id,
                ),
            )
        )
        .where(leads.c.id == int(lead_id))
        .order_by(a.c.assigned_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    attributes = store.json_value(row.attributes) or {}
    return Lead(
        id=int(row.id),
        status=row.status,
        owner_id=None if row.owner_rep_id is None else int(row.owner_rep_id),
        first_name=row.first_name,
        last_name=row.last_name,
        email=row.email,
        company=row.company,
        country=row.country,
        timezone=row.timezone,
        attributes=attributes if isinstance(attributes, dict) else {},
        assignment_id=None if row.assignment_id is None else int(row.assignment_id),
        pool=row.pool,
    )


# --------------------------------------------------------------------------- reps


@dataclass(frozen=True)
class RepRow:
    id: int  # reps.id
    rep: Rep


def _rep(row: Any) -> Rep | None:
    hours = store.json_value(row.working_hours)
    off = store.json_value(row.out_of_office) or []
    try:
        return Rep(
            id=row.code,
            name=row.name,
            email=row.email,
            timezone=row.timezone or "UTC",
            working_hours={"mon-fri": ["09:00-17:00"]} if hours is None else hours,
            out_of_office=tuple(off),
            country=row.country,
            pools=tuple(store.json_value(row.pools) or ()),
            active=bool(row.active),
        )
    except ValueError as exc:
        log.warning("booking: rep %s cannot be read (%s); not offered", row.code, exc)
        return None


def reps(conn: Connection) -> dict[str, RepRow]:
    """Every rep with a code, as routing last stored them (working hours, time zone,
    holidays, time off, pools), by code."""
    r = t.reps
    rows = conn.execute(
        select(
            r.c.id,
            r.c.code,
            r.c.name,
            r.c.email,
            r.c.timezone,
            r.c.working_hours,
            r.c.out_of_office,
            r.c.country,
            r.c.pools,
            r.c.active,
        ).where(r.c.code.is_not(None))
    ).all()
    out: dict[str, RepRow] = {}
    for row in rows:
        rep = _rep(row)
        if rep is not None:
            out[row.code] = RepRow(int(row.id), rep)
    return out


def pool_members(all_reps: dict[str, RepRow], pool: str | None) -> list[Rep]:
    if not pool:
        return []
    return [row.rep for row in all_reps.values() if pool in row.rep.pools and row.rep.active]


# --------------------------------------------------------------------------- meetings


def booked(
    conn: Connection, rep_ids: Sequence[int], start: datetime, end: datetime
) -> dict[int, list[Interval]]:
    """Live meetings per rep id overlapping ``[start, end)``."""
    m = t.meetings
    out: dict[int, list[Interval]] = {}
    if not rep_ids:
        return out
    for row in conn.execute(
        select(m.c.rep_id, m.c.starts_at, m.c.ends_at).where(
            m.c.rep_id.in_([int(i) for i in rep_ids]),
            m.c.status == "booked",
            m.c.starts_at < _utc(end),
            m.c.ends_at > _utc(start),
        )
    ):
        out.setdefault(int(row.rep_id), []).append((_utc(row.starts_at), _utc(row.ends_at)))
    return out


@dataclass(frozen=True)
class Meeting:
    id: int
    lead_id: int
    rep_id: int
    rep_code: str
    starts_at: datetime
    ends_at: datetime
    status: str
    link_id: int | None
    manage_id: str
    uid: str
    sequence: int
    lead_zone: str | None
    activity_id: int | None


def _meeting(row: Any) -> Meeting:
    return Meeting(
        id=int(row.id),
        lead_id=int(row.lead_id),
        rep_id=int(row.rep_id),
        rep_code=row.rep_code,
        starts_at=_utc(row.starts_at),
        ends_at=_utc(row.ends_at),
        status=row.status,
        link_id=None if row.link_id is None else int(row.link_id),
        manage_id=row.manage_id,
        uid=row.uid,
        sequence=int(row.sequence),
        lead_zone=row.lead_zone,
        activity_id=None if row.activity_id is None else int(row.activity_id),
    )


def _meeting_query():
    m = t.meetings
    return select(
        m.c.id,
        m.c.lead_id,
        m.c.rep_id,
        m.c.rep_code,
        m.c.starts_at,
        m.c.ends_at,
        m.c.status,
        m.c.link_id,
        m.c.manage_id,
        m.c.uid,
        m.c.sequence,
        m.c.lead_zone,
        m.c.activity_id,
    )


def live_meeting_of_link(conn: Connection, link_id: int) -> Meeting | None:
    m = t.meetings
    row = conn.execute(
        _meeting_query().where(m.c.link_id == int(link_id), m.c.status == "booked")
    ).first()
    return None if row is None else _meeting(row)


def meeting_by_manage_id(
    conn: Connection, manage_id: str, *, for_update: bool = False
) -> Meeting | None:
    m = t.meetings
    query = _meeting_query().where(m.c.manage_id == manage_id)
    if for_update and store.is_postgres(conn):
        query = query.with_for_update(of=m)
    row = conn.execute(query).first()
    return None if row is None else _meeting(row)
