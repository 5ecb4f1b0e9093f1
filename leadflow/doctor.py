"""``leadflow doctor``'s checks that need no Prefect: the database (reachable, migrations at
head), dead claims, the ledger audit, the drop folders, the public URL and an SMTP server.

Each check returns a ``Finding`` (one line for a person, with the fix when it fails) and
runs under ``guarded``, which gives it a deadline, so the doctor never hangs on a database,
mail server or URL that does not answer. The Prefect side (the API, blocks, work pool
workers, the lane) is ``app/doctor.py``'s.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from leadflow.settings import Settings, database_label

if TYPE_CHECKING:
    from blocks.notifier import SmtpNotifier

UPGRADE = "`leadflow db upgrade` applies the migrations"
SET_PUBLIC_URL = (
    "set where people reach `leadflow serve`: LEADFLOW_PUBLIC_URL, or for every host the "
    "leadflow-site block (`LEADFLOW_PUBLIC_URL=https://... leadflow blocks init`)"
)


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``ok`` False is a failure (doctor exits 1); ``skipped`` says
    the check could not apply (no Prefect server, the database already failed)."""

    check: str
    ok: bool
    detail: str
    fix: str | None = None
    skipped: bool = False

    def line(self) -> str:
        mark = "skip" if self.skipped else "ok" if self.ok else "FAIL"
        text_ = f"{mark:<4} {self.check}: {self.detail}"
        return f"{text_} — fix: {self.fix}" if self.fix and not self.ok else text_

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ok(check: str, detail: str) -> Finding:
    return Finding(check, True, detail)


def failed(check: str, detail: str, fix: str) -> Finding:
    return Finding(check, False, detail, fix)


def skipped(check: str, why: str) -> Finding:
    return Finding(check, True, why, skipped=True)


def one_line(exc: BaseException) -> str:
    """An exception as one short line (its first line, its type when it says nothing)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if len(message) <= 300 else message[:297] + "..."


def guarded(
    check: str, run: Callable[[], Finding | list[Finding]], timeout: float
) -> list[Finding]:
    """``run()`` with a deadline: a check that raises is a failure naming the error, one
    still running after ``timeout`` seconds is a failure saying so (its thread is left to
    finish on its own, a daemon, so the doctor exits on time)."""
    outcome: list[Finding | list[Finding] | BaseException] = []

    def work() -> None:
        try:
            outcome.append(run())
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=work, name=f"doctor-{check}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return [
            failed(
                check,
                f"no answer within {timeout:g} s",
                "look at what it waits on (a server down, a lock held); --timeout gives it longer",
            )
        ]
    result = outcome[0]
    if isinstance(result, BaseException):
        return [failed(check, f"{type(result).__name__}: {one_line(result)}", "see the error")]
    return result if isinstance(result, list) else [result]


# --------------------------------------------------------------------------- the database


@contextmanager
def connection(url: str, timeout: float) -> Iterator[Connection]:
    """A connection of its own (not the process's pooled engine) that gives up after
    ``timeout``: connecting, and on PostgreSQL every statement."""
    from leadflow.store import with_driver

    parsed = make_url(with_driver(url))
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, poolclass=NullPool, connect_args={"timeout": timeout})
    else:
        engine = create_engine(
            parsed, poolclass=NullPool, connect_args={"connect_timeout": max(1, int(timeout))}
        )
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET statement_timeout = {int(timeout * 1000)}"))
            yield conn
    finally:
        engine.dispose()


def migration_head() -> str | None:
    """The newest migration this code ships (``sql/versions``)."""
    from alembic.script import ScriptDirectory

    import sql

    return ScriptDirectory(str(Path(sql.__file__).parent)).get_current_head()


def database(settings: Settings, timeout: float, api: str | None) -> Finding:
    """The database ``get_settings()`` finds: there, answering, at the migrations' head.
    With a Prefect server, the demo SQLite (no ``leadflow`` block) is a failure: the
    deployed flows would not be using it."""
    from alembic.runtime.migration import MigrationContext

    url = settings.database_url
    where = f"{database_label(url)} ({settings.database_source})"
    if api and settings.database_source.startswith("the demo database"):
        return failed(
            "database",
            where,
            "save the deployment's database as the block: "
            "LEADFLOW_DATABASE_URL=postgresql://... leadflow blocks init",
        )
    parsed = make_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(file).exists():
        return failed("database", f"{where}: no such file", f"{UPGRADE} (and creates it)")
    try:
        with connection(url, timeout) as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        return failed(
            "database",
            f"{where} does not answer: {one_line(exc)}",
            "start the database, or correct its URL (LEADFLOW_DATABASE_URL or the block)",
        )
    head = migration_head()
    if current == head:
        return ok("database", f"{where} at migration head {head}")
    if current is None:
        return failed("database", f"{where} has no leadflow tables", UPGRADE)
    return failed("database", f"{where} at migration {current}, head is {head}", UPGRADE)


def dead_claims(url: str, timeout: float, older_than: timedelta, now: datetime) -> Finding:
    """Claims whose lease ran out more than ``older_than`` ago (or with no claim row): their
    holder crashed and no run of that hop has taken its leads over since."""
    import pandas as pd

    from leadflow import queue

    with connection(url, timeout) as conn:
        claims = queue.list_claims(conn, now)
    if claims.empty:
        return ok("claims", "no leads are claimed")
    expires = pd.to_datetime(claims["expires_at"], utc=True)
    stale = claims[expires.isna() | (expires < pd.Timestamp(now - older_than))]
    live = len(claims) - int(claims["dead"].sum())
    if stale.empty:
        return ok("claims", f"{len(claims)} claim(s), {live} live, none dead for long")
    hops = ", ".join(sorted(set(stale["hop"].astype(str))))
    return failed(
        "claims",
        f"{len(stale)} dead claim(s) holding {int(stale['held'].sum())} lead(s) ({hops}), "
        f"expired over {int(older_than.total_seconds())} s ago: their holders crashed",
        "`leadflow claims --release` frees them",
    )


def audit(url: str, timeout: float) -> Finding:
    from leadflow.audit import run_audit

    with connection(url, timeout) as conn:
        report = run_audit(conn, max_listed=3)
    if report.ok:
        return ok(
            "audit",
            f"ledger OK: {report.batches} batches, {report.received} received, {report.leads} leads",
        )
    return failed(
        "audit",
        f"{len(report.problems)} problem(s): {report.problems[0]}",
        "`leadflow audit` lists them",
    )


# --------------------------------------------------------------------------- this host


def drop_folders(settings: Settings) -> Finding:
    folders = settings.drop_folders()
    missing = [str(path) for path in folders.values() if not path.is_dir()]
    if missing:
        return failed(
            "drop folders",
            f"missing: {', '.join(missing)} (the capture deployments read them)",
            "`leadflow setup` creates them",
        )
    return ok("drop folders", f"{settings.inbox_dir}/{{{','.join(folders)}}} present")


def public_url(base: str, default: str | None, timeout: float) -> Finding:
    """The public base URL is set (not the default) and ``GET <url>/healthz`` answers 200."""
    serve = "start `leadflow serve` where the public URL points (unsubscribe links use it)"
    if default is not None and base == default:
        return failed(
            "public url",
            f"not set: links in mail would point at the default {base}",
            SET_PUBLIC_URL,
        )
    try:
        answer = requests.get(f"{base}/healthz", timeout=timeout)
    except requests.RequestException as exc:
        return failed("public url", f"{base}/healthz does not answer ({type(exc).__name__})", serve)
    if answer.status_code != 200:
        return failed("public url", f"{base}/healthz answered HTTP {answer.status_code}", serve)
    return ok("public url", f"{base}/healthz answered 200")


def smtp(name: str, notifier: SmtpNotifier, timeout: float) -> Finding:
    """Connect, EHLO, STARTTLS/SSL and log in with the block's settings; no mail is sent."""
    from leadflow.outbox.sender import Unreachable, smtp_probe

    check = f"smtp {name}"
    probe = notifier.model_copy(update={"timeout_seconds": min(notifier.timeout_seconds, timeout)})
    try:
        return ok(check, smtp_probe(probe))
    except Unreachable as exc:
        return failed(check, f"{name}: {_smtp_problem(exc)}", _smtp_fix(name, notifier, exc))


def _smtp_problem(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, smtplib.SMTPResponseException):
        error = cause.smtp_error
        said = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        return f"{cause.smtp_code} {' '.join(said.split())}"
    return str(exc)


def _smtp_fix(name: str, notifier: SmtpNotifier, exc: BaseException) -> str:
    cause = exc.__cause__
    again = f"`LEADFLOW_SMTP_...=... leadflow blocks init --overwrite` saves {name!r} again"
    if isinstance(cause, smtplib.SMTPAuthenticationError):
        return f"the server refuses the username/password in block {name!r}; {again}"
    if isinstance(cause, smtplib.SMTPNotSupportedError):
        return (
            f"the server does not offer what block {name!r} asks for (STARTTLS or AUTH): "
            f"set LEADFLOW_SMTP_STARTTLS / _SSL / _USERNAME to match it; {again}"
        )
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed: port 465 wants ssl, 587 wants starttls; {again}"
    return (
        f"nothing answers at {notifier.host}:{notifier.port}: check the host and port in "
        f"block {name!r} (587 STARTTLS, 465 SSL) and the firewall; {again}"
    )
