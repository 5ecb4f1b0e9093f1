"""The outbox sender: delivers due messages by SMTP, webhook, Maildir or CalDAV (booked
meetings on reps' calendars), each exactly as the outbox promises (see
``leadflow/outbox/store.py`` for the guarantee).

One run of ``send_due``:

1. drains every due message of the kinds it is asked to put first (owner notices and SLA
   escalations unless told otherwise), in small claims, with no cap: nobody waits on an MQL
   because nurture mail was due;
2. then sends up to ``limit`` more due messages of any kind, urgent first.

For each claimed message the lease is renewed (conditional on the claim's token) just before
the send and the outcome is recorded after it (a success with the next step, in one commit), so
a message is never in two senders' hands.
A temporary failure (SMTP 4xx, webhook 5xx/429, a lost connection) backs off with jitter
within the kind's time budget; a permanent one (SMTP 5xx, webhook 4xx) is dead at once with
the reason. A circuit breaker per channel stops the run from spending attempts on a server
that is down: after ``BREAKER_THRESHOLD`` temporary failures in a row (or a refused
connection) the channel's claimed messages go back untried and the run claims no more for
it; the next run probes it again. Database errors while recording (a dropped connection) are
retried, each step being idempotent under the token. Log lines carry counts and masked
addresses, never a raw email. No Prefect here: ``leadflow/routing/notices.py`` wraps it in a task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mailbox
import random
import smtplib
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from typing import Any, TypeVar

import requests
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError

from blocks.calendar import CalDavCalendars
from blocks.notifier import MaildirNotifier, SmtpNotifier, WebhookNotifier
from leadflow import store
from leadflow import tables as t
from leadflow.calendars import Calendars, CalendarUnavailable
from leadflow.outbox import store as outbox
from leadflow.quarantine import masked

log = logging.getLogger("leadflow.routing.notices")

CLAIM_BATCH = 50  # small claims: a second sender finds work, and a crash strands few
BREAKER_THRESHOLD = 3  # temporary failures in a row before a channel is left for this run
BREAKER_COOL_OFF = timedelta(minutes=1)  # when messages put back by an open breaker are due
DB_ATTEMPTS = 6  # a dropped database connection: retried over about 6 s
# Headers are never folded into RFC 2047 words: a List-Unsubscribe URL must stay a URL.
MAIL_POLICY = policy.default.clone(max_line_length=998)

Notifier = SmtpNotifier | WebhookNotifier | MaildirNotifier | CalDavCalendars
T = TypeVar("T")


class Unreachable(Exception):
    """The server could not be reached or the connection dropped: no message is to blame."""


class Permanent(Exception):
    """This message can never be delivered as it is (SMTP 5xx, a webhook 4xx)."""


@dataclass
class SendReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0  # temporary failures, due again after backoff
    dead: int = 0
    deferred: int = 0  # put back untried (server unreachable, breaker open, no notifier)
    taken_over: int = 0  # claimed, then found in another sender's hands: not sent by us
    bounced: int = 0  # of the dead: nurture mail refused for good (a bounce event, the lead's)
    breaker_opened: list[str] = field(default_factory=list)
    backlog: dict[str, int] = field(default_factory=dict)  # outbox.backlog after the run
    errors: list[str] = field(default_factory=list)  # masked, for the run's artifact

    @property
    def undelivered(self) -> int:
        """Messages this run could not deliver (failed, dead or put back)."""
        return self.failed + self.dead + self.deferred

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "sent": self.sent,
            "failed": self.failed,
            "dead": self.dead,
            "deferred": self.deferred,
            "taken_over": self.taken_over,
            "bounced": self.bounced,
            "undelivered": self.undelivered,
            "breaker_opened": list(self.breaker_opened),
            "backlog": dict(self.backlog),
            "errors": self.errors[:20],
        }


# --------------------------------------------------------------------------- the wire


def message_id(idempotency_key: str) -> str:
    """The ``Message-ID`` of the message with this key: the same on every resend, so a
    receiver (or a person) can tell a resend after a crash from a second message."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"<{digest}@leadflow>"


def build_email(notifier: SmtpNotifier | MaildirNotifier, row: dict[str, Any]) -> EmailMessage:
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = notifier.from_address
    message["To"] = row["recipient"]
    message["Subject"] = row["subject"] or ""
    message["Message-ID"] = message_id(row["idempotency_key"])
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


def smtp_label(notifier: SmtpNotifier) -> str:
    """The SMTP server as a message names it: its block (when saved) and address."""
    name = getattr(notifier, "_block_document_name", None)
    where = f"{notifier.host}:{notifier.port}"
    return f"SMTP block {name!r} ({where})" if name else f"SMTP {where}"


def _smtp_connect(notifier: SmtpNotifier) -> smtplib.SMTP:
    """A connected, logged-in client: TLS from the start (``ssl``) or after STARTTLS,
    trusting ``ca_file`` when set. Any failure is ``Unreachable`` with one line naming the
    block: its messages go back to the outbox untried."""
    client: smtplib.SMTP | None = None
    try:
        context = ssl_module.create_default_context(cafile=notifier.ca_file or None)
        if notifier.ssl:
            client = smtplib.SMTP_SSL(
                notifier.host, notifier.port, timeout=notifier.timeout_seconds, context=context
            )
        else:
            client = smtplib.SMTP(notifier.host, notifier.port, timeout=notifier.timeout_seconds)
            if notifier.starttls:
                client.starttls(context=context)
        if notifier.username:
            password = notifier.password.get_secret_value() if notifier.password else ""
            client.login(notifier.username, password)
        return client
    except smtplib.SMTPAuthenticationError as exc:
        _close_quietly(client)
        raise Unreachable(
            f"{smtp_label(notifier)}: login refused ({exc.smtp_code}); check the block's "
            "username and password"
        ) from exc
    except (OSError, smtplib.SMTPException) as exc:
        _close_quietly(client)
        detail = " ".join(str(masked(exc)).split())
        raise Unreachable(f"{smtp_label(notifier)}: {type(exc).__name__}: {detail}") from exc


def _close_quietly(client: smtplib.SMTP | None) -> None:
    if client is not None:
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.close()


def smtp_probe(notifier: SmtpNotifier) -> str:
    """Connect, EHLO, STARTTLS or SSL and log in exactly as a send does, then quit: no mail
    is sent (``leadflow doctor``). Returns what was done; raises ``Unreachable`` (its
    ``__cause__`` the ``smtplib``/socket error) when a step fails."""
    client = _smtp_connect(notifier)
    try:
        client.ehlo_or_helo_if_needed()
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.quit()
    except (OSError, smtplib.SMTPException) as exc:
        client.close()
        raise Unreachable(
            f"SMTP {notifier.host}:{notifier.port}: {type(exc).__name__}: {masked(exc)}"
        ) from exc
    steps = ["EHLO"] + (["SSL"] if notifier.ssl else ["STARTTLS"] if notifier.starttls else [])
    if notifier.username:
        steps.append("login")
    return f"{notifier.host}:{notifier.port} answered {' + '.join(steps)} (no mail sent)"


def _send_email(client: Any, notifier: SmtpNotifier, row: dict[str, Any]) -> None:
    try:
        client.send_message(build_email(notifier, row))
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
    except requests.ConnectionError as exc:
        raise Unreachable(f"webhook: {type(exc).__name__}") from exc
    except requests.RequestException as exc:  # a timeout: the call may have landed
        raise RuntimeError(f"webhook: {type(exc).__name__}") from exc
    if response.status_code < 300:
        return
    error = f"webhook answered {response.status_code}"
    if 400 <= response.status_code < 500 and response.status_code not in (408, 409, 425, 429):
        raise Permanent(error)
    raise RuntimeError(error)


def _write_calendar(calendars: Calendars, row: dict[str, Any]) -> None:
    """A ``calendar_event`` message: its payload ``{"rep", "uid", "action": put|delete}``
    and, to put, the event's ICS as its body. A calendar that can never take it (404 or 403,
    the rep has none configured, an ICS without that UID) is ``Permanent``; a server that
    does not answer or refuses the login is ``Unreachable`` (the channel waits for the next
    run); any other error answer is temporary (retried with backoff). Putting and deleting
    are idempotent, so a resend after a crash changes nothing."""
    payload = store.json_value(row.get("payload")) or {}
    rep, uid, action = payload.get("rep"), payload.get("uid"), payload.get("action")
    if not rep or not uid or action not in ("put", "delete"):
        raise Permanent("a calendar event needs a payload with rep, uid and action put|delete")
    try:
        if action == "put":
            calendars.put(str(rep), str(uid), row["body"] or "")
        else:
            calendars.delete(str(rep), str(uid))
    except CalendarUnavailable as exc:
        if exc.permanent:
            raise Permanent(str(exc)) from exc
        if exc.status is None or exc.status in (401, 407):
            raise Unreachable(str(exc)) from exc
        raise RuntimeError(str(exc)) from exc
    except ValueError as exc:  # the ICS is not an event with that UID
        raise Permanent(f"calendar event: {exc}") from exc


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


class _Channel:
    """One channel's notifier, its client (opened on first use) and its breaker."""

    def __init__(self, name: str, notifier: Notifier | None) -> None:
        self.name = name
        self.notifier = notifier
        self.client: Any = None
        self.failures_in_a_row = 0
        self.open = notifier is None  # no notifier: nothing to send with
        self.why = ""  # why the breaker opened (masked), for messages put back

    def connect(self) -> None:
        if self.client is not None:
            return
        if isinstance(self.notifier, MaildirNotifier):
            self.client = _MaildirClient(self.notifier)
        elif self.name == "caldav":
            self.client = Calendars(self.notifier.config())  # type: ignore[union-attr]
        elif self.name == "email":
            self.client = _smtp_connect(self.notifier)  # type: ignore[arg-type]
        else:
            self.client = requests.Session()

    def send(self, row: dict[str, Any]) -> None:
        self.connect()
        if self.name == "email":
            _send_email(self.client, self.notifier, row)  # type: ignore[arg-type]
        elif self.name == "caldav":
            _write_calendar(self.client, row)
        else:
            _post_webhook(self.client, self.notifier, row)  # type: ignore[arg-type]

    def drop(self) -> None:
        """Forget the client (after a lost connection; the next send reconnects)."""
        client, self.client = self.client, None
        if client is None:
            return
        with contextlib.suppress(OSError, smtplib.SMTPException):
            if self.name == "email":
                client.quit()
            else:
                client.close()


# --------------------------------------------------------------------------- the database


def retrying(call: Callable[[], T], what: str) -> T:
    """``call()``, again if the database connection dropped (``pg_terminate_backend``, a
    failover) or SQLite was busy. ``call`` must be safe to repeat: every outbox step is,
    being conditional on the claim's token and status."""
    for attempt in range(1, DB_ATTEMPTS + 1):
        try:
            return call()
        except DBAPIError as exc:
            transient = exc.connection_invalidated or type(exc).__name__ == "OperationalError"
            if not transient or attempt == DB_ATTEMPTS:
                raise
            log.warning(
                "outbox: database error while %s (attempt %d of %d), retrying: %s",
                what,
                attempt,
                DB_ATTEMPTS,
                type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
            )
            time.sleep(min(0.2 * 2 ** (attempt - 1), 2.0))
    raise AssertionError("unreachable")


def with_retries(engine: Engine, work: Callable[[Connection], T], what: str) -> T:
    """``work(conn)`` in a transaction of its own, retried as ``retrying`` says."""

    def once() -> T:
        with engine.begin() as conn:
            return work(conn)

    return retrying(once, what)


# --------------------------------------------------------------------------- sending


class _Run:
    """One ``send_due`` call: the channels, the report, the clocks."""

    def __init__(
        self,
        engine: Engine,
        notifiers: Sequence[Notifier],
        now: datetime,
        clock: Callable[[], datetime],
        rng: random.Random,
        lease: timedelta | None,
    ) -> None:
        by_name = {n.channel: n for n in notifiers}
        self.channels = {name: _Channel(name, by_name.get(name)) for name in outbox.CHANNELS}
        self.engine = engine
        self.now = now if now.tzinfo else now.replace(tzinfo=UTC)
        self.clock = clock
        self.rng = rng
        self.started = time.monotonic()
        self.token = outbox.new_token()
        self.report = SendReport()
        # The last message sent and when, marked in the transaction of the next step (one
        # commit a message instead of two); every step, and the end of the run, marks it.
        self.unmarked: tuple[int, datetime] | None = None
        # Longer than any one send can take, whatever the notifiers' timeouts.
        timeouts = [float(getattr(n, "timeout_seconds", 0) or 0) for n in notifiers]
        self.lease = lease or max(outbox.LEASE, timedelta(seconds=6 * max(timeouts, default=0)))

    def sent_at(self) -> datetime:
        """The time of sending on the run's clock: its ``now`` plus the time spent so far."""
        return self.now + timedelta(seconds=time.monotonic() - self.started)

    def step(self, work: Callable[[Connection], T], what: str) -> T:
        """``work`` in a transaction (retried as ``with_retries`` says), marking the message
        sent just before it in the same transaction."""
        unmarked = self.unmarked

        def both(conn: Connection) -> tuple[int, T]:
            marked = 0
            if unmarked is not None:
                marked = outbox.mark_sent(conn, [unmarked[0]], unmarked[1], token=self.token)
            return marked, work(conn)

        if unmarked is not None:
            what = f"marking a message sent and {what}"
        marked, result = with_retries(self.engine, both, what)
        self.unmarked = None
        self.report.sent += marked
        return result

    def flush(self) -> None:
        """Mark the last message sent, if it is not yet."""
        if self.unmarked is not None:
            self.step(lambda conn: None, "nothing else")

    def drain(
        self,
        kinds: Sequence[str] | None,
        limit: int | None,
        lead_ids: Sequence[int] | None = None,
    ) -> None:
        """Claim and send until nothing (of ``kinds``, about ``lead_ids``) is due on a
        channel that works, or ``limit`` messages were claimed. Channels without a notifier
        are left alone: their messages stay queued for a sender that has one."""
        taken = 0
        while limit is None or taken < limit:
            channels = [name for name, channel in self.channels.items() if not channel.open]
            if not channels:
                return
            size = CLAIM_BATCH if limit is None else min(CLAIM_BATCH, limit - taken)
            self.flush()
            claimed = retrying(
                lambda size=size, channels=channels: outbox.claim_due(
                    self.engine,
                    size,
                    self.now,
                    token=self.token,
                    kinds=kinds,
                    channels=channels,
                    lead_ids=lead_ids,
                    lease=self.lease,
                    clock=self.clock(),
                ),
                "claiming messages",
            )
            if claimed.empty:
                return
            taken += len(claimed)
            self.report.claimed += len(claimed)
            for row in claimed.to_dict("records"):
                channel = self.channels[row["channel"]]
                if channel.open:  # its breaker opened earlier in this batch
                    self._put_back([row], channel.why, BREAKER_COOL_OFF)
                else:
                    self._deliver(channel, row)

    def _deliver(self, channel: _Channel, row: dict[str, Any]) -> None:
        message = int(row["id"])
        mine = self.step(
            lambda conn: outbox.renew(
                conn, message, self.token, clock=self.clock(), lease=self.lease
            ),
            "renewing a lease",
        )
        if not mine:
            self.report.taken_over += 1
            return
        try:
            channel.send(row)
        except Unreachable as exc:
            channel.drop()
            self._trip(channel, str(exc))
            self._put_back([row], channel.why, BREAKER_COOL_OFF)
            return
        except Permanent as exc:
            self._failed(row, str(exc), permanent=True)
            return
        except Exception as exc:  # temporary: this message, retried with backoff
            self._failed(row, f"{type(exc).__name__}: {masked(exc)}")
            channel.failures_in_a_row += 1
            if channel.failures_in_a_row >= BREAKER_THRESHOLD:
                self._trip(channel, f"{channel.failures_in_a_row} temporary failures in a row")
            return
        channel.failures_in_a_row = 0
        self.unmarked = (message, self.sent_at())

    def _trip(self, channel: _Channel, why: str) -> None:
        channel.open = True
        channel.why = f"{masked(why)} (breaker open: tried again in the next run)"
        self.report.breaker_opened.append(channel.name)
        log.warning(
            "outbox: %s channel left for this run (%s); its messages wait for the next run",
            channel.name,
            masked(why),
        )

    def _put_back(self, rows: list[dict[str, Any]], error: str, delay: timedelta) -> None:
        ids = [int(r["id"]) for r in rows]
        deferred, died = self.step(
            lambda conn: outbox.defer(
                conn, ids, masked(error), self.now, token=self.token, delay=delay
            ),
            "putting messages back",
        )
        self.report.deferred += deferred
        self.report.dead += died
        if error not in self.report.errors:
            self.report.errors.append(masked(error))

    def _failed(self, row: dict[str, Any], error: str, *, permanent: bool = False) -> None:
        error = masked(error)
        status = self.step(
            lambda conn: outbox.mark_failed(
                conn,
                int(row["id"]),
                error,
                self.now,
                token=self.token,
                permanent=permanent,
                rng=self.rng,
            ),
            "recording a failure",
        )
        if status is None:
            self.report.taken_over += 1
            return
        if status == "dead" and row.get("kind") == "nurture_touch" and permanent:
            record_bounce(self.engine, row, error, self.now)
            self.report.bounced += 1
        if status == "dead":
            self.report.dead += 1
        else:
            self.report.failed += 1
        self.report.errors.append(f"#{row['id']} to {masked(row['recipient'])}: {error}")
        log.warning(
            "outbox: message #%s to %s %s: %s", row["id"], masked(row["recipient"]), status, error
        )

    def close(self) -> None:
        for channel in self.channels.values():
            channel.drop()


def send_due(
    engine: Engine,
    notifiers: Sequence[Notifier],
    limit: int,
    now: datetime,
    *,
    first: Sequence[str] | None = outbox.URGENT,
    leads_first: Sequence[int] | None = None,
    clock: Callable[[], datetime] | None = None,
    rng: random.Random | None = None,
    lease: timedelta | None = None,
) -> SendReport:
    """Deliver every due message about ``leads_first`` (the lane's own leads: their owners
    hear at once, not behind a pipeline's backlog), then every due message of the ``first``
    kinds (default: owner notices and SLA escalations), then up to ``limit`` more due
    messages of any kind, urgent first. Each is
    marked sent (at the time of sending), failed (due again after backoff), dead (permanent
    error or budget spent) or put back untried (server unreachable or failing, no notifier
    for its channel). Never raises for a delivery problem; a database that stays gone
    through the retries raises, leaving the messages in flight to the lease. ``lease``
    (default: ``outbox.LEASE``, longer for slow notifiers), ``clock`` (the wall clock) and
    ``rng`` (backoff jitter) are for tests and benchmarks."""
    run = _Run(
        engine, notifiers, now, clock or (lambda: datetime.now(UTC)), rng or random.Random(), lease
    )
    try:
        if leads_first:
            run.drain(None, None, leads_first)
        if first:
            run.drain(first, None)
        run.drain(None, limit)
        run.flush()
    finally:
        run.close()
    report = run.report
    report.backlog = with_retries(engine, lambda conn: outbox.backlog(conn, run.now), "counting")
    log.info(
        "outbox: %d claimed, %d sent, %d failed, %d dead, %d put back, %d taken over",
        report.claimed,
        report.sent,
        report.failed,
        report.dead,
        report.deferred,
        report.taken_over,
    )
    return report


def record_bounce(engine: Engine, row: dict[str, Any], error: str, now: datetime) -> bool:
    """A nurture email the server refused for good comes back as a ``bounce`` engagement
    event for its lead (once per message): the lead is suppressed from then on."""
    payload = store.json_value(row.get("payload")) or {}
    if payload.get("audience") != "lead" or row.get("channel") != "email" or not row.get("lead_id"):
        return False
    events = t.engagement_events
    key = f"bounce:{row['idempotency_key']}"

    def write(conn: Connection) -> bool:
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

    return with_retries(engine, write, "recording a bounce")
