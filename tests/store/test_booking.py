"""The booking core on a real database (SQLite and PostgreSQL): routing mails the link, the
page offers the owner's slots, a booking writes one meeting (however often it is posted, and
when two leads post the same slot at once), a cancel frees the slot and reopens the SLA
clock, a rep with no hours sends the lead to the pool, a reassigned lead's link follows it."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import func, select, update

from leadflow import lifecycle, store
from leadflow import runner as hops
from leadflow import tables as t
from leadflow.booking import rules as booking_rules
from leadflow.booking import store as booking_store
from leadflow.booking import tokens
from leadflow.booking.service import Booking
from leadflow.calendars import Calendars
from leadflow.routing import hop as route_hop
from leadflow.sla import check as sla
from tasks import routing as routing_tasks
from tasks import sla as sla_tasks

from helpers import NOW, ROUTING, mqls, write

pytestmark = pytest.mark.store

RULES = booking_rules.BookingRules()
FIRST_MEETING = """
name: test-sla
policies:
  - name: acceptance
    met_by: [accept, reject]
    within: 2d
  - name: first-meeting
    start: accepted
    met_by: [meeting_booked, meeting_held]
    within: 5d
"""


@pytest.fixture(autouse=True)
def _signing(monkeypatch):
    monkeypatch.setenv("LEADFLOW_PUBLIC_URL", "https://leads.example.com")
    monkeypatch.setenv("LEADFLOW_UNSUBSCRIBE_SECRET", "booking-test-secret")


def route(url: str, tmp_path, ids: list[int]) -> None:
    context = routing_tasks.load_context.fn(str(write(tmp_path / "routing.yaml", ROUTING)))
    outcome = hops.run_batch(
        route_hop.HOP, context, store.get_engine(url), now=NOW, after=0, candidates=ids
    )
    assert outcome is not None and outcome.stats["routed"] == len(ids)


def routed(url: str, tmp_path, n: int = 1, country: str = "US") -> list[int]:
    ids = mqls(store.get_engine(url), [country] * n, temperature="hot")
    route(url, tmp_path, ids)
    return ids


def token_of(engine, lead: int) -> str:
    with engine.connect() as conn:
        found = booking_store.newest_link(conn, lead, NOW)
    assert found is not None
    return found


def booking(url: str) -> Booking:
    return Booking(url, Calendars(None), RULES)


def owner_code(engine, lead: int) -> str:
    with engine.connect() as conn:
        return conn.execute(
            select(t.reps.c.code)
            .join(t.leads, t.leads.c.owner_rep_id == t.reps.c.id)
            .where(t.leads.c.id == lead)
        ).scalar_one()


def escalate_to(engine, lead: int, code: str) -> None:
    """The lead reassigned to rep ``code`` as an SLA escalation writes it."""
    with engine.begin() as conn:
        rep_id = conn.execute(select(t.reps.c.id).where(t.reps.c.code == code)).scalar_one()
        conn.execute(update(t.assignments).values(released_at=NOW))
        conn.execute(
            t.assignments.insert().values(
                lead_id=lead,
                rep_id=rep_id,
                rep_code=code,
                step="sla_reassign",
                version="v",
                reason="escalated",
                assigned_at=NOW,
            )
        )
        lifecycle.apply(
            conn,
            pd.DataFrame(
                {
                    "id": [lead],
                    "from_status": ["routed"],
                    "to_status": ["routed"],
                    "owner_rep_id": [rep_id],
                }
            ),
            actor="test",
            at=NOW,
        )


def book_one(database_url: str, tmp_path):
    """A routed lead that booked the first slot its page offers: (engine, lead, token,
    service, slot, outcome)."""
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    token = token_of(engine, lead)
    service = booking(database_url)
    slot = service.view(token, now=NOW).offer.slots[0]
    done = service.book(token, slot.key, tokens.form_token(token), now=NOW)
    return engine, lead, token, service, slot, done


def sla_checker(engine, tmp_path, policies: str):
    """One SLA check at a given time, under ``policies`` and the test routing rules."""
    context = sla_tasks.load_context.fn(
        str(write(tmp_path / "sla.yaml", policies)), str(write(tmp_path / "r.yaml", ROUTING))
    )

    def check(now: datetime) -> None:
        with engine.begin() as conn:
            sla.check(conn, context, now)

    return check


def activity(conn, lead: int, rep_id: int, kind: str, at: datetime) -> None:
    """A rep's activity as the activities capture records it."""
    conn.execute(
        t.activities.insert().values(
            lead_id=lead,
            rep_id=rep_id,
            activity_type=kind,
            occurred_at=at,
            source="test",
            activity_key=f"{kind}-{lead}-{at.isoformat()}",
            recorded_at=at,
        )
    )


def count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_routing_mails_the_link_and_the_page_offers_the_owners_slots(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    token = token_of(engine, lead)
    assert "@" not in token and "buyer" not in token  # nothing of the lead in its link
    with engine.connect() as conn:
        rows = conn.execute(select(t.outbox.c.kind, t.outbox.c.body, t.outbox.c.recipient)).all()
    by_kind = {row.kind: row for row in rows}
    assert set(by_kind) == {"owner_notification", "booking_invite"}
    url = tokens.book_url(token)
    assert url in by_kind["owner_notification"].body and url in by_kind["booking_invite"].body
    assert by_kind["booking_invite"].recipient == f"lead{lead}@buyer{lead}.com"
    view = booking(database_url).view(token, now=NOW)
    assert view is not None and view.zone == "America/New_York"  # a US lead
    owner = owner_code(engine, lead)
    assert view.offer.slots and {s.rep for s in view.offer.slots} == {owner}
    first = view.offer.slots[0]
    assert first.start >= NOW + RULES.lead_time
    assert first.end - first.start == RULES.length
    # Routing again (a rerun) reuses the link: the lead's email and the notice agree.
    with engine.begin() as conn:
        assert booking_store.create_links(conn, [lead], NOW, RULES.link_life) == {lead: token}


def test_no_invitation_for_a_lead_nurture_would_never_contact(
    database_url, tmp_path, shipped_rules
):
    """The lead's booking invitation obeys nurture's suppression: unsubscribed, bounced,
    do-not-email and the suppression list (of the rules folder in use). Their owners' notices
    still carry the link."""
    (shipped_rules / "lists" / "suppression.txt").write_text("kept.by@sales.example\n")
    engine = store.get_engine(database_url)
    ids = mqls(engine, ["US"] * 5, temperature="hot")
    plain, do_not_email, listed, bounced, unsubscribed = ids
    with engine.begin() as conn:
        leads = t.leads
        conn.execute(
            update(leads)
            .where(leads.c.id == do_not_email)
            .values(attributes={"do_not_email": True})
        )
        conn.execute(
            update(leads).where(leads.c.id == listed).values(email="kept.by@sales.example")
        )
        for lead, kind in ((bounced, "bounce"), (unsubscribed, "unsubscribe")):
            conn.execute(
                t.engagement_events.insert().values(
                    lead_id=lead, event_type=kind, occurred_at=NOW, event_key=f"{kind}-{lead}"
                )
            )
    route(database_url, tmp_path, ids)
    with engine.connect() as conn:
        rows = conn.execute(select(t.outbox.c.kind, t.outbox.c.lead_id, t.outbox.c.body)).all()
    invited = {row.lead_id for row in rows if row.kind == "booking_invite"}
    assert invited == {plain}
    noticed = {
        row.lead_id for row in rows if row.kind == "owner_notification" and "/book/" in row.body
    }
    assert noticed == set(ids)

    # A cadences file or a suppression list that cannot be read (a spreadsheet's Latin-1
    # export) sends no invitation (never one to a suppressed lead); routing and the owners'
    # links go on.
    listed = shipped_rules / "lists" / "suppression.txt"
    good = (shipped_rules / "cadences.yaml").read_text()
    for path, text in (
        (shipped_rules / "cadences.yaml", b"cadences: [\n"),
        (listed, "kept.by@caf\u00e9.example\n".encode("latin-1")),
    ):
        path.write_bytes(text)
        more = mqls(engine, ["US"], temperature="hot")
        route(database_url, tmp_path, more)
        with engine.connect() as conn:
            kinds = (
                conn.execute(select(t.outbox.c.kind).where(t.outbox.c.lead_id == more[0]))
                .scalars()
                .all()
            )
        assert kinds == ["owner_notification"], path
        (shipped_rules / "cadences.yaml").write_text(good)


def test_a_wrong_tampered_or_expired_token_opens_nothing(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    token = token_of(engine, lead)
    service = booking(database_url)
    tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
    other = token.split(".")[0][::-1] + "." + ".".join(token.split(".")[1:])
    assert service.view(tampered, now=NOW) is None
    assert service.view(other, now=NOW) is None
    assert service.view("not-a-token", now=NOW) is None
    assert service.view(token, now=NOW + RULES.link_life + timedelta(seconds=1)) is None
    # A token signed for another purpose is not a booking token.
    manage = tokens.manage_token(token.split(".")[0])
    assert service.view(manage, now=NOW) is None


def test_a_booking_writes_one_meeting_however_often_it_is_posted(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    token = token_of(engine, lead)
    service = booking(database_url)
    slot = service.view(token, now=NOW).offer.slots[2]
    form = tokens.form_token(token)
    assert service.book(token, slot.key, None, now=NOW).kind == "forbidden"  # no form field
    first = service.book(token, slot.key, form, now=NOW)
    again = service.book(token, slot.key, form, now=NOW + timedelta(seconds=1))
    assert first.kind == again.kind == "booked" and not first.replayed and again.replayed
    assert again.meeting.id == first.meeting.id and first.meeting.starts_at == slot.start
    assert count(engine, t.meetings) == 1
    assert count(engine, t.activities, t.activities.c.activity_type == "meeting_booked") == 1
    assert count(engine, t.outbox, t.outbox.c.kind == "meeting_invitation") == 2
    assert count(engine, t.lead_events, t.lead_events.c.kind == "booking") == 1
    with engine.connect() as conn:
        ics = (
            conn.execute(
                select(t.outbox.c.attachments).where(t.outbox.c.kind == "meeting_invitation")
            )
            .scalars()
            .first()
        )
    content = store.json_value(ics)[0]["content"]
    assert "METHOD:REQUEST" in content and first.meeting.uid in content
    # The page now shows the meeting, not slots.
    view = service.view(token, now=NOW)
    assert view.meeting is not None and view.meeting.id == first.meeting.id


def test_two_leads_posting_the_same_slot_at_once_book_it_once(database_url, tmp_path):
    engine = store.get_engine(database_url)
    leads = routed(database_url, tmp_path, n=4)
    owners: dict[str, list[int]] = {}
    for lead in leads:
        owners.setdefault(owner_code(engine, lead), []).append(lead)
    pair = next(ids for ids in owners.values() if len(ids) >= 2)[:2]
    service = booking(database_url)
    token_list = [token_of(engine, lead) for lead in pair]
    slot = service.view(token_list[0], now=NOW).offer.slots[0]
    assert service.view(token_list[1], now=NOW).offer.find(slot.key) is not None
    barrier, outcomes = threading.Barrier(2), {}

    def post(token: str) -> None:
        barrier.wait()
        outcomes[token] = service.book(token, slot.key, tokens.form_token(token), now=NOW)

    threads = [threading.Thread(target=post, args=(token,)) for token in token_list]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    kinds = sorted(outcome.kind for outcome in outcomes.values())
    assert kinds == ["booked", "taken"]
    taken = next(o for o in outcomes.values() if o.kind == "taken")
    assert taken.view.offer.slots and taken.view.offer.find(slot.key) is None  # the next slots
    assert count(engine, t.meetings, t.meetings.c.status == "booked") == 1


def test_a_cancel_frees_the_slot_and_reopens_the_sla_clock(database_url, tmp_path):
    engine, lead, token, service, slot, done = book_one(database_url, tmp_path)
    with engine.begin() as conn:  # a clock the booking met (what the SLA check writes)
        conn.execute(
            t.sla_timers.insert().values(
                lead_id=lead,
                assignment_id=1,
                rep_id=done.meeting.rep_id,
                policy="first-meeting",
                started_at=NOW,
                warn_at=NOW,
                due_at=NOW + timedelta(days=5),
                met_at=NOW,
                met_by=done.meeting.activity_id,
                business_minutes=1.0,
                closed_at=NOW,
                closed_reason="met",
                created_at=NOW,
            )
        )
    manage = tokens.manage_token(done.meeting.manage_id)
    assert service.cancel(manage, "0" * 32, now=NOW).kind == "forbidden"
    later = NOW + timedelta(minutes=5)
    cancelled = service.cancel(manage, tokens.form_token(manage), now=later)
    assert cancelled.kind == "cancelled" and not cancelled.replayed
    assert service.cancel(manage, tokens.form_token(manage), now=later).replayed  # once
    with engine.connect() as conn:
        timer = conn.execute(select(t.sla_timers)).one()
        voided = conn.execute(
            select(t.activities.c.voided_at).where(t.activities.c.id == done.meeting.activity_id)
        ).scalar_one()
    assert timer.met_at is None and timer.closed_at is None and voided is not None
    assert count(engine, t.activities, t.activities.c.activity_type == "meeting_cancelled") == 1
    cancels = count(engine, t.outbox, t.outbox.c.idempotency_key.like("meeting:%:cancel:%"))
    assert cancels == 2  # the lead and the rep
    # The slot is free again, for this lead's link too.
    view = service.view(token, now=NOW)
    assert view.meeting is None and view.offer.find(slot.key) is not None


def test_a_rep_without_working_hours_sends_the_lead_to_the_pool(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    owner = owner_code(engine, lead)
    with engine.begin() as conn:
        conn.execute(update(t.reps).where(t.reps.c.code == owner).values(working_hours={}))
    token = token_of(engine, lead)
    service = booking(database_url)
    view = service.view(token, now=NOW)
    assert view.offer.pool == "na" and "no working hours" in view.offer.why_pool
    other = {"ann": "bob", "bob": "ann"}[owner]
    assert {s.rep for s in view.offer.slots} == {other}
    done = service.book(token, view.offer.slots[0].key, tokens.form_token(token), now=NOW)
    assert done.kind == "booked" and done.meeting.rep_code == other
    assert owner_code(engine, lead) == other
    with engine.connect() as conn:
        reason = conn.execute(
            select(t.lead_events.c.reason).where(t.lead_events.c.kind == "reassignment")
        ).scalar_one()
        steps = conn.execute(
            select(t.assignments.c.step, t.assignments.c.released_at)
            .where(t.assignments.c.lead_id == lead)
            .order_by(t.assignments.c.id)
        ).all()
    assert "no working hours" in reason and f"{owner} -> {other}" in reason
    assert steps[-1].step == "booking" and steps[-1].released_at is None
    assert steps[0].released_at is not None


def test_a_reassigned_leads_link_offers_its_current_owner(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    owner = owner_code(engine, lead)
    other = {"ann": "bob", "bob": "ann"}[owner]
    escalate_to(engine, lead, other)
    view = booking(database_url).view(token_of(engine, lead), now=NOW)
    assert {s.rep for s in view.offer.slots} == {other}


def test_a_meeting_booked_before_acceptance_meets_the_first_meeting_clock(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    check = sla_checker(engine, tmp_path, FIRST_MEETING)
    check(NOW)
    token = token_of(engine, lead)
    service = booking(database_url)
    slot = service.view(token, now=NOW).offer.slots[3]
    booked_at = NOW + timedelta(minutes=10)
    done = service.book(token, slot.key, tokens.form_token(token), now=booked_at)
    assert done.kind == "booked"
    check(booked_at + timedelta(minutes=1))
    accepted_at = NOW + timedelta(hours=1)
    with engine.begin() as conn:
        activity(conn, lead, done.meeting.rep_id, "accept", accepted_at)
        lifecycle.apply(
            conn,
            pd.DataFrame({"id": [lead], "from_status": ["routed"], "to_status": ["accepted"]}),
            actor="test",
            at=accepted_at,
        )
    check(accepted_at + timedelta(minutes=1))
    with engine.connect() as conn:
        timer = conn.execute(
            select(t.sla_timers).where(t.sla_timers.c.policy == "first-meeting")
        ).one()
    assert timer.met_by == done.meeting.activity_id and timer.closed_reason == "met"
    manage = tokens.manage_token(done.meeting.manage_id)
    service.cancel(manage, tokens.form_token(manage), now=accepted_at + timedelta(hours=1))
    with engine.connect() as conn:
        reopened = conn.execute(
            select(t.sla_timers).where(t.sla_timers.c.policy == "first-meeting")
        ).one()
    assert reopened.met_at is None and reopened.closed_at is None


def test_a_free_slot_the_page_did_not_show_can_still_be_booked(database_url, tmp_path):
    """A day shows a few of its free slots, spread; a booking re-spreads them, so a lead may
    post a free slot the fresh page would not show (found by bench/booking.py: 409s for free
    slots). Any free slot of an offered rep books; a busy or foreign one does not."""
    from leadflow.booking import slots as offers

    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    token = token_of(engine, lead)
    service = booking(database_url)
    view = service.view(token, now=NOW)
    shown = {s.key for s in view.offer.slots}
    row = view.reps[owner_code(engine, lead)]
    hidden = [s for s in offers.free_slots(row.rep, NOW, RULES) if s.key not in shown]
    assert hidden, "a working day has more free slots than slots_per_day"
    form = tokens.form_token(token)
    foreign = f"cem@{int(hidden[0].start.timestamp())}"  # a rep outside the offer
    assert service.book(token, foreign, form, now=NOW).kind == "taken"
    done = service.book(token, hidden[0].key, form, now=NOW)
    assert done.kind == "booked" and done.meeting.starts_at == hidden[0].start


# ------------------------------------------------------------ what the review found


def test_a_call_after_a_cancelled_booking_still_meets_the_clock(database_url, tmp_path):
    """Booked, then called, then the booking cancelled: the clock the booking met reopens
    and the next check meets it with the call (the watermark had passed it)."""
    from helpers import POLICIES

    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    check = sla_checker(engine, tmp_path, POLICIES)
    check(NOW)
    token = token_of(engine, lead)
    service = booking(database_url)
    slot = service.view(token, now=NOW).offer.slots[3]
    done = service.book(token, slot.key, tokens.form_token(token), now=NOW + timedelta(minutes=2))
    check(NOW + timedelta(minutes=3))
    called = NOW + timedelta(minutes=5)
    with engine.begin() as conn:
        activity(conn, lead, done.meeting.rep_id, "call", called)
    check(NOW + timedelta(minutes=6))
    manage = tokens.manage_token(done.meeting.manage_id)
    service.cancel(manage, tokens.form_token(manage), now=NOW + timedelta(minutes=10))
    check(NOW + timedelta(minutes=20))
    with engine.connect() as conn:
        timer = conn.execute(
            select(t.sla_timers).where(t.sla_timers.c.policy == "hot-first-touch")
        ).one()
        breaches = conn.execute(select(func.count()).select_from(t.sla_breaches)).scalar_one()
    assert timer.met_at is not None and store.json_value(timer.met_at) is not None
    assert timer.met_at.replace(tzinfo=None) == called.replace(tzinfo=None)
    assert timer.level == 0 and breaches == 0


def test_an_accepted_lead_keeps_its_owner_however_full_their_calendar(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    owner = owner_code(engine, lead)
    with engine.begin() as conn:
        conn.execute(update(t.reps).where(t.reps.c.code == owner).values(working_hours={}))
        lifecycle.apply(
            conn,
            pd.DataFrame({"id": [lead], "from_status": ["routed"], "to_status": ["accepted"]}),
            actor="test",
            at=NOW,
        )
    view = booking(database_url).view(token_of(engine, lead), now=NOW)
    assert view.offer.slots == [] and view.offer.pool is None


def test_a_rep_the_rules_dropped_is_in_no_pool(database_url, tmp_path):
    engine = store.get_engine(database_url)
    routed(database_url, tmp_path)
    dropped = ROUTING.replace(
        "  - {id: bob, name: Bob B, email: bob@reps.example, manager: olga, pools: [na], "
        "weight: 1, timezone: America/Chicago, capacity: {max_open: null}}\n",
        "",
    )
    assert dropped != ROUTING
    from leadflow.routing import store as routing_store

    context = routing_tasks.load_context.fn(str(write(tmp_path / "dropped.yaml", dropped)))
    with engine.begin() as conn:  # what the next route run does first
        routing_store.sync_reps(conn, context.rules, NOW)
    with engine.connect() as conn:
        pools = dict(conn.execute(select(t.reps.c.code, t.reps.c.pools)).all())
    assert store.json_value(pools["bob"]) == [] and store.json_value(pools["ann"]) == ["na"]


def test_a_reassigned_leads_old_meeting_ends_when_it_books_its_new_owner(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    token = token_of(engine, lead)
    service = booking(database_url)
    first = service.view(token, now=NOW).offer.slots[0]
    old = service.book(token, first.key, tokens.form_token(token), now=NOW).meeting
    owner = owner_code(engine, lead)
    other = {"ann": "bob", "bob": "ann"}[owner]
    escalate_to(engine, lead, other)  # an SLA escalation gives the lead to the other rep
    manage = tokens.manage_token(old.manage_id)
    later = service.reschedule(manage, first.key, tokens.form_token(manage), now=NOW)
    assert later.kind == "closed"  # the old meeting cannot be moved any more
    view = service.view(token, now=NOW)
    assert view.meeting is None and {s.rep for s in view.offer.slots} == {other}
    done = service.book(token, view.offer.slots[0].key, tokens.form_token(token), now=NOW)
    assert done.kind == "booked" and done.meeting.rep_code == other
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(t.meetings.c.id, t.meetings.c.status)).all())
    assert statuses == {old.id: "cancelled", done.meeting.id: "booked"}


def test_a_slot_shown_a_few_minutes_ago_still_books(database_url, tmp_path):
    engine = store.get_engine(database_url)
    [lead] = routed(database_url, tmp_path)
    token = token_of(engine, lead)
    service = booking(database_url)
    first = service.view(token, now=NOW).offer.slots[0]
    assert first.start - NOW < RULES.lead_time + timedelta(minutes=30)
    posted = NOW + timedelta(minutes=5) + (first.start - NOW - RULES.lead_time)
    done = service.book(token, first.key, tokens.form_token(token), now=posted)
    assert done.kind == "booked" and done.meeting.starts_at == first.start


def test_the_reps_invitation_never_carries_the_leads_manage_link(database_url, tmp_path):
    engine, _, _, _, _, done = book_one(database_url, tmp_path)
    manage = tokens.manage_token(done.meeting.manage_id)
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                select(t.outbox.c.idempotency_key, t.outbox.c.attachments).where(
                    t.outbox.c.kind == "meeting_invitation"
                )
            ).all()
        )
    lead_ics = store.json_value(rows[f"meeting:{done.meeting.id}:v0:lead"])[0]["content"]
    rep_ics = store.json_value(rows[f"meeting:{done.meeting.id}:v0:rep"])[0]["content"]
    signature = manage.split(".")[1]
    assert signature in lead_ics.replace("\r\n ", "") and signature not in rep_ics
