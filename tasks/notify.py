"""Telling people: owner notifications built from routing decisions, and the outbox sender.

Pure first: ``owner_messages`` turns a batch's assignments into outbox rows (text from a
Jinja2 template with the reason the lead is the rep's; for hot leads, the owner's next free
slots in their working hours and an ICS invitation built with ``icalendar``). The routing hop
enqueues them in the assignment's transaction.

Then delivery: ``send_due`` claims due messages and sends email with plain ``smtplib`` and
webhooks with ``requests``. Every message is marked the moment it is sent, so a crash never
resends what went out; a refused recipient or a failing webhook call marks that message
alone (retried with backoff, or dead when the error is permanent); an unreachable server puts
the batch back untouched. ``send_outbox`` is the Prefect task around it. Log lines carry
counts and masked addresses, never a raw email.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mailbox
import re
import smtplib
import ssl as ssl_module
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pandas as pd
import requests
from icalendar import Calendar, Event, vCalAddress, vText
from jinja2 import Environment, StrictUndefined
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from blocks.notifier import NOTIFIERS, MaildirNotifier, SmtpNotifier, WebhookNotifier
from leadflow import outbox, store
from leadflow.business_time import next_free_slots
from leadflow.routing_rules import Rep, RoutingRules

log = logging.getLogger(__name__)

MEETING = timedelta(minutes=30)
SLOTS_PER_HOT_LEAD = 3
# A first meeting proposed in less than an hour is a slot nobody can take.
NOT_BEFORE = timedelta(hours=1)

# --------------------------------------------------------------------------- messages (pure)

_TEMPLATES = Environment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
SUBJECT = _TEMPLATES.from_string(
    "New {{ temperature or 'new' }} lead for you: {{ lead_name }}"
    "{% if company %} ({{ company }}){% endif %}"
)
BODY = _TEMPLATES.from_string(
    """Hi {{ rep_name }},

{{ lead_name }}{% if title %}, {{ title }}{% endif %}{% if company %} at {{ company }}{% endif %} is now your lead.

Why it is yours: {{ reason }}.
{% if score is not none %}Score {{ score }}{% if temperature %} ({{ temperature }}){% endif %}.
{% endif %}{% if email %}Email: {{ email }}
{% endif %}{% if phone %}Phone: {{ phone }}
{% endif %}{% if slots %}
This lead is hot: people who hear back within five minutes qualify far more often.
Your next free slots for a first meeting ({{ time_zone }}):
{% for slot in slots %}  - {{ slot }}
{% endfor %}The attached invitation holds the first one; move it if another suits the lead.
{% endif %}
Lead #{{ lead_id }} · routing rules {{ version }}
"""
)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    text = str(value).strip()
    return text or None


def _texts(values: pd.Series) -> list[str | None]:
    """A column as stripped text, blanks and missing values as None (vectorised ``_text``)."""
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    # Not ``where(text != "", None)``: on pandas 3 string columns that gives NaN, not None.
    return [value or None for value in text.tolist()]


def meeting_invitation(
    rep: Rep, lead: dict[str, Any], slot: tuple[datetime, datetime], uid: str, now: datetime
) -> str:
    """An ICS ``REQUEST`` for a first meeting in ``slot`` (UTC), organised by the rep."""
    calendar = Calendar()
    calendar.add("prodid", "-//leadflow//routing//EN")
    calendar.add("version", "2.0")
    calendar.add("method", "REQUEST")
    event = Event()
    event.add("uid", uid)
    event.add("dtstamp", now)
    event.add("dtstart", slot[0])
    event.add("dtend", slot[1])
    name = _text(lead.get("lead_name")) or "a new lead"
    company = _text(lead.get("company"))
    event.add("summary", f"First call: {name}" + (f" ({company})" if company else ""))
    event.add("status", "TENTATIVE")
    organizer = vCalAddress(f"mailto:{rep.email}")
    organizer.params["cn"] = vText(rep.name)
    event.add("organizer", organizer)
    if email := _text(lead.get("email")):
        attendee = vCalAddress(f"mailto:{email}")
        attendee.params["cn"] = vText(name)
        attendee.params["role"] = vText("REQ-PARTICIPANT")
        event.add("attendee", attendee)
    calendar.add_component(event)
    return calendar.to_ical().decode("utf-8")


_SHAPES: dict[tuple[int, tuple[Any, ...]], str] = {}


def _render(template: Any, values: dict[str, Any], shape: tuple[Any, ...]) -> str:
    """``template.render(values)``, fast for a batch: Jinja renders each *shape* of message
    once (``shape``: which optional parts are present, how many slots) with placeholders, and
    each message fills its shape with ``str.format_map`` (a Jinja render costs ~20 µs)."""
    key = (id(template), shape)
    form = _SHAPES.get(key)
    if form is None:
        holders = {
            name: (
                [f"{{{name}[{k}]}}" for k in range(len(v))]
                if isinstance(v, list)
                else None
                if v is None
                else f"{{{name}}}"
            )
            for name, v in values.items()
        }
        form = template.render(holders)
        _SHAPES[key] = form
    return form.format_map(values)


def owner_messages(
    assignments: pd.DataFrame,
    leads: pd.DataFrame,
    rules: RoutingRules,
    now: datetime,
    *,
    busy: dict[str, Sequence[tuple[datetime, datetime]]] | None = None,
) -> pd.DataFrame:
    """One ``owner_notification`` per assigned lead (waiting leads get none), as outbox rows
    (``leadflow.outbox.MESSAGE_COLUMNS``). Idempotency key ``owner:<lead id>:<rep id>``: a
    rerun never notifies twice, a reassignment to someone else notifies them.

    ``assignments``: ``route_leads``'s (id, owner, reason, version). ``leads``: ``id`` and
    whichever of first_name, last_name, company, title, email, phone, score, temperature it
    has. Hot leads get ``SLOTS_PER_HOT_LEAD`` distinct slots per lead from the owner's next
    free time (``busy``: rep id -> intervals already taken), and an ICS invitation."""
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    routed = assignments[assignments["owner"].notna()]
    if routed.empty:
        return pd.DataFrame(columns=list(outbox.MESSAGE_COLUMNS))
    details = leads.set_index("id").reindex(routed["id"].to_numpy())
    reps = {rep.id: rep for rep in rules.reps}
    hot_counts = (
        routed.assign(
            hot=(details.get("temperature", pd.Series(index=details.index)) == "hot").to_numpy()
        )
        .groupby("owner")["hot"]
        .sum()
    )
    # Slots are found once per owner for all their hot leads, each lead getting its own.
    free: dict[str, list[tuple[datetime, datetime]]] = {}
    for rep_id, hot in hot_counts.items():
        if hot:
            free[rep_id] = next_free_slots(
                reps[rep_id],
                now,
                int(hot) * SLOTS_PER_HOT_LEAD,
                MEETING,
                (busy or {}).get(rep_id, ()),
                not_before=NOT_BEFORE,
            )
    used: dict[str, int] = {}
    rows = []
    column = {
        name: (_texts(details[name]) if name in details.columns else [None] * len(details))
        for name in (
            "first_name",
            "last_name",
            "title",
            "company",
            "email",
            "phone",
            "score",
            "temperature",
        )
    }
    ids = routed["id"].tolist()
    owners = routed["owner"].tolist()
    reasons = routed["reason"].tolist()
    versions = routed["version"].tolist()
    for i, lead_id in enumerate(ids):
        rep = reps[owners[i]]
        lead = {name: values[i] for name, values in column.items()}  # fixed key order
        first, last = lead["first_name"], lead["last_name"]
        lead_name = " ".join(p for p in (first, last) if p) or f"lead #{lead_id}"
        temperature = lead["temperature"]
        slots: list[tuple[datetime, datetime]] = []
        if temperature == "hot" and rep.id in free:
            start = used.get(rep.id, 0)
            slots = free[rep.id][start : start + SLOTS_PER_HOT_LEAD]
            used[rep.id] = start + SLOTS_PER_HOT_LEAD
        key = f"owner:{lead_id}:{rep.id}"
        values = {
            **lead,
            "rep_name": rep.name.split(" ")[0],
            "lead_name": lead_name,
            "reason": reasons[i],
            "lead_id": lead_id,
            "version": versions[i],
            "time_zone": rep.timezone,
            "slots": [
                s.astimezone(rep.zone).strftime("%a %d %b %H:%M")
                + f"-{e.astimezone(rep.zone):%H:%M}"
                for s, e in slots
            ],
        }
        shape = (*(value is not None for value in lead.values()), len(slots))
        attachments = None
        if slots:
            uid = hashlib.sha256(key.encode()).hexdigest()[:24] + "@leadflow"
            attachments = [
                {
                    "filename": "first-meeting.ics",
                    "content_type": "text/calendar; method=REQUEST",
                    "content": meeting_invitation(rep, values, slots[0], uid, now),
                }
            ]
        rows.append(
            {
                "idempotency_key": key,
                "kind": "owner_notification",
                "channel": "email",
                "recipient": rep.email,
                "lead_id": int(lead_id),
                "subject": _render(SUBJECT, values, shape),
                "body": _render(BODY, values, shape),
                "payload": {
                    "lead_id": int(lead_id),
                    "owner": rep.id,
                    "reason": reasons[i],
                    "slots": [[s.isoformat(), e.isoformat()] for s, e in slots],
                },
                "attachments": attachments,
            }
        )
    return pd.DataFrame(rows, columns=list(outbox.MESSAGE_COLUMNS)[:9])


# --------------------------------------------------------------------------- delivery

_EMAIL = re.compile(r"([^\s,;:\"'<>()\[\]@]+)@([^\s,;:\"'<>()\[\]@]+)")


def masked(text: Any) -> str:
    """Text fit for a log line: ``a…@example.com`` instead of an address."""
    return _EMAIL.sub(lambda m: f"{m.group(1)[:1]}…@{m.group(2)}", str(text))


class Unreachable(Exception):
    """The server could not be reached or refused us: no message is to blame."""


class Permanent(Exception):
    """This message can never be delivered as it is (a refused address, a 4xx)."""


@dataclass
class SendReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0
    errors: list[str] = field(default_factory=list)  # masked, for the run's artifact

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "sent": self.sent,
            "failed": self.failed,
            "dead": self.dead,
            "deferred": self.deferred,
            "errors": self.errors[:20],
        }


def _email(notifier: SmtpNotifier, row: dict[str, Any]) -> EmailMessage:
    message = EmailMessage()
    message["From"] = notifier.from_address
    message["To"] = row["recipient"]
    message["Subject"] = row["subject"] or ""
    # A stable Message-ID: a resend after a crash is recognisably the same message.
    digest = hashlib.sha256(row["idempotency_key"].encode()).hexdigest()[:24]
    message["Message-ID"] = make_msgid(idstring=digest, domain="leadflow")
    payload = store.json_value(row.get("payload")) or {}
    for name, value in (payload.get("headers") or {}).items():  # List-Unsubscribe, ...
        message[name] = value
    message.set_content(row["body"] or "")
    for attachment in store.json_value(row.get("attachments")) or []:
        main, _, rest = attachment.get("content_type", "text/plain").partition("/")
        subtype, *params = [p.strip() for p in rest.split(";")]
        message.add_attachment(
            attachment["content"].encode("utf-8"),
            maintype=main,
            subtype=subtype,
            filename=attachment.get("filename"),
            params=dict(p.split("=", 1) for p in params if "=" in p),
        )
    return message


def _smtp_connect(notifier: SmtpNotifier) -> smtplib.SMTP:
    try:
        if notifier.ssl:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                notifier.host,
                notifier.port,
                timeout=notifier.timeout_seconds,
                context=ssl_module.create_default_context(),
            )
        else:
            client = smtplib.SMTP(notifier.host, notifier.port, timeout=notifier.timeout_seconds)
            if notifier.starttls:
                client.starttls(context=ssl_module.create_default_context())
        if notifier.username:
            password = notifier.password.get_secret_value() if notifier.password else ""
            client.login(notifier.username, password)
        return client
    except (OSError, smtplib.SMTPException) as exc:
        raise Unreachable(
            f"SMTP {notifier.host}:{notifier.port}: {type(exc).__name__}: {exc}"
        ) from exc


def _send_email(client: smtplib.SMTP, notifier: SmtpNotifier, row: dict[str, Any]) -> None:
    try:
        client.send_message(_email(notifier, row))
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        error = f"recipient refused ({', '.join(str(c) for c in codes)})"
        raise (Permanent(error) if all(c >= 500 for c in codes) else RuntimeError(error)) from exc
    except smtplib.SMTPResponseException as exc:
        error = f"SMTP {exc.smtp_code}: {masked(exc.smtp_error)}"
        raise (Permanent(error) if exc.smtp_code >= 500 else RuntimeError(error)) from exc
    except (OSError, smtplib.SMTPServerDisconnected) as exc:
        raise Unreachable(f"SMTP connection lost: {type(exc).__name__}") from exc


def _post_webhook(
    session: requests.Session, notifier: WebhookNotifier, row: dict[str, Any]
) -> None:
    url = (
        row["recipient"]
        if str(row["recipient"]).startswith(("http://", "https://"))
        else notifier.url
    )
    headers = {"Idempotency-Key": row["idempotency_key"], "Content-Type": "application/json"}
    if notifier.token is not None:
        headers["Authorization"] = f"Bearer {notifier.token.get_secret_value()}"
    body = store.json_value(row.get("payload")) or {}
    try:
        response = session.post(
            url,
            data=json.dumps(body, default=str),
            headers=headers,
            timeout=notifier.timeout_seconds,
        )
    except requests.RequestException as exc:
        raise RuntimeError(f"webhook: {type(exc).__name__}") from exc
    if response.status_code < 300:
        return
    error = f"webhook answered {response.status_code}"
    if 400 <= response.status_code < 500 and response.status_code not in (408, 409, 425, 429):
        raise Permanent(error)
    raise RuntimeError(error)


class _MaildirClient:
    """The SMTP client's two methods, over a local Maildir."""

    def __init__(self, notifier: MaildirNotifier) -> None:
        try:
            self.box = mailbox.Maildir(notifier.directory, create=True)
        except OSError as exc:
            raise Unreachable(f"maildir {notifier.directory}: {type(exc).__name__}") from exc

    def send_message(self, message: EmailMessage) -> None:
        self.box.add(message)

    def quit(self) -> None:
        self.box.close()


def _by_channel(notifiers: Sequence[SmtpNotifier | WebhookNotifier]) -> dict[str, Any]:
    return {n.channel: n for n in notifiers}


def send_due(
    engine: Engine,
    notifiers: Sequence[SmtpNotifier | WebhookNotifier],
    limit: int,
    now: datetime,
) -> SendReport:
    """Claim up to ``limit`` due messages and deliver them; each is marked sent, failed (due
    again after backoff), dead (permanent error or last attempt) or put back untried (server
    unreachable, no notifier for its channel). Never raises for a delivery problem."""
    report = SendReport()
    claimed = outbox.claim_due(engine, limit, now)
    report.claimed = len(claimed)
    if claimed.empty:
        return report
    channels = _by_channel(notifiers)
    rows = claimed.to_dict("records")

    def put_back(batch: list[dict[str, Any]], error: str) -> None:
        with engine.begin() as conn:
            report.deferred += outbox.defer(conn, [r["id"] for r in batch], error, now)
        report.errors.append(masked(error))
        log.warning("outbox: %d message(s) put back: %s", len(batch), masked(error))

    for channel in ("email", "webhook"):
        batch = [r for r in rows if r["channel"] == channel]
        if not batch:
            continue
        notifier = channels.get(channel)
        if notifier is None:
            put_back(batch, f"no notifier for channel {channel!r}")
            continue
        client: Any
        try:
            if isinstance(notifier, MaildirNotifier):
                client = _MaildirClient(notifier)
            elif channel == "email":
                client = _smtp_connect(notifier)
            else:
                client = requests.Session()
        except Unreachable as exc:
            put_back(batch, str(exc))
            continue
        try:
            for position, row in enumerate(batch):
                try:
                    if channel == "email":
                        _send_email(client, notifier, row)
                    else:
                        _post_webhook(client, notifier, row)
                except Unreachable as exc:
                    put_back(batch[position:], str(exc))
                    break
                except Permanent as exc:
                    _failed(engine, report, row, str(exc), now, permanent=True)
                    continue
                except Exception as exc:  # any other failure: this message only, retried
                    _failed(engine, report, row, f"{type(exc).__name__}: {exc}", now)
                    continue
                with engine.begin() as conn:  # at once: a crash later must not resend it
                    report.sent += outbox.mark_sent(conn, [row["id"]], now)
        finally:
            if channel == "email":
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    client.quit()
            else:
                client.close()
    log.info(
        "outbox: %d claimed, %d sent, %d failed, %d dead, %d put back",
        report.claimed,
        report.sent,
        report.failed,
        report.dead,
        report.deferred,
    )
    return report


def _failed(
    engine: Engine,
    report: SendReport,
    row: dict[str, Any],
    error: str,
    now: datetime,
    *,
    permanent: bool = False,
) -> None:
    error = masked(error)
    with engine.begin() as conn:
        status = outbox.mark_failed(
            conn, int(row["id"]), error, now, **({"max_attempts": 1} if permanent else {})
        )
    if permanent and row.get("kind") == "nurture_touch":
        record_bounce(engine, row, error, now)
    if status == "dead":
        report.dead += 1
    else:
        report.failed += 1
    report.errors.append(f"#{row['id']} to {masked(row['recipient'])}: {error}")
    log.warning(
        "outbox: message #%s to %s %s: %s", row["id"], masked(row["recipient"]), status, error
    )


def record_bounce(engine: Engine, row: dict[str, Any], error: str, now: datetime) -> bool:
    """A nurture email the server refused for good comes back as a ``bounce`` engagement
    event for its lead (once per message): the lead is suppressed from then on."""
    from sqlalchemy import select

    from leadflow import tables as t

    payload = store.json_value(row.get("payload")) or {}
    if payload.get("audience") != "lead" or row.get("channel") != "email" or not row.get("lead_id"):
        return False
    events = t.engagement_events
    key = f"bounce:{row['idempotency_key']}"
    with engine.begin() as conn:
        if conn.execute(select(events.c.id).where(events.c.event_key == key)).first():
            return False
        conn.execute(
            events.insert().values(
                lead_id=int(row["lead_id"]),
                event_type="bounce",
                occurred_at=now if now.tzinfo else now.replace(tzinfo=UTC),
                properties={"error": error[:500], "outbox_id": int(row["id"])},
                source="outbox",
                event_key=key,
            )
        )
    return True


def resolve_notifiers(spec: Any) -> list[SmtpNotifier | WebhookNotifier]:
    """Notifiers from a block instance, ``block:NAME``, ``maildir:PATH``, or a list or
    comma-separated mix of those."""
    from blocks import resolve

    if spec is None:
        return []
    if isinstance(spec, NOTIFIERS):
        return [spec]
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    out: list[SmtpNotifier | WebhookNotifier] = []
    for item in spec:
        if isinstance(item, NOTIFIERS):
            out.append(item)
            continue
        if item.startswith("maildir:"):  # no credentials involved: a local folder
            out.append(MaildirNotifier(directory=item[len("maildir:") :]))
            continue
        name = resolve.block_name(item)
        if name is None:
            raise ValueError(f"a notifier is block:NAME or maildir:PATH, got {item!r}")
        out.append(resolve.load(name, NOTIFIERS, "notifier"))
    return out


@task(name="send-outbox", cache_policy=NO_CACHE, task_run_name="send-outbox")
def send_outbox(
    database_url: str,
    notifier_spec: Any,
    limit: int = 500,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Send what is due in the outbox (see ``send_due``); returns the counts and masked errors."""
    engine = store.get_engine(database_url)
    report = send_due(engine, resolve_notifiers(notifier_spec), limit, now or store.utcnow())
    return report.as_dict()
