"""``leadflow doctor``'s checks that need no Prefect, on real parts: SQLite and PostgreSQL
databases, an aiosmtpd server on loopback with and without a login, a loopback HTTP server
for the public URL; and the database a command finds (``leadflow.settings``), named in its
JSON and on a miss."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import insert, update

from app.devstack import MailSink, free_port
from leadflow import doctor, settings, store
from leadflow import tables as t

from helpers import mqls, run_cli

NOW = datetime(2026, 11, 2, 15, tzinfo=UTC)
LONG = timedelta(minutes=10)


# --------------------------------------------------------------------------- the database


def test_database_at_head_on_each_backend(database_url: str) -> None:
    found = doctor.database(settings.get_settings(), 5, None)
    assert found.ok, found.line()
    assert found.detail.endswith(f"at migration head {doctor.migration_head()}")
    assert "(from LEADFLOW_DATABASE_URL)" in found.detail
    assert found.line().startswith("ok   database: ")


def test_database_behind_head_missing_empty_or_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic.script import ScriptDirectory

    import sql

    head = doctor.migration_head()
    previous = ScriptDirectory(str(Path(sql.__file__).parent)).get_revision(head).down_revision
    behind = f"sqlite:///{tmp_path / 'behind.db'}"
    store.upgrade(behind, revision=previous)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    down = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/leads"
    cases = {
        behind: f"at migration {previous}, head is {head}",
        f"sqlite:///{tmp_path / 'missing.db'}": "missing.db (from LEADFLOW_DATABASE_URL): no such file",
        f"sqlite:///{empty}": "has no leadflow tables",
        down: "does not answer",
    }
    for url, expected in cases.items():
        monkeypatch.setenv("LEADFLOW_DATABASE_URL", url)
        started = time.monotonic()
        found = doctor.database(settings.get_settings(), 3, None)
        assert not found.ok and expected in found.detail, found.line()
        assert time.monotonic() - started < 10
        assert found.fix and "— fix: " in found.line()
        assert "hunter2" not in found.line()
    assert not (tmp_path / "missing.db").exists()  # the doctor does not create a database


def test_demo_database_beside_a_prefect_server_fails(sqlite_url: str) -> None:
    demo = dataclasses.replace(
        settings.get_settings(),
        database_source="the demo database: the Prefect server at http://x/api has no "
        "'leadflow' database block",
    )
    found = doctor.database(demo, 5, "http://x/api")
    assert not found.ok
    assert "has no 'leadflow' database block" in found.detail
    assert "leadflow blocks init" in (found.fix or "")


def _claim(engine, ids: list[int], token: str, expires_at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(update(t.leads).where(t.leads.c.id.in_(ids)).values(claimed_by=token))
        conn.execute(
            insert(t.claims).values(
                token=token,
                hop=token.split(":")[0],
                holder="gone-host:4242",
                leads=len(ids),
                claimed_at=expires_at - timedelta(minutes=1),
                renewed_at=expires_at - timedelta(minutes=1),
                expires_at=expires_at,
            )
        )


def test_dead_claims_counted_only_when_long_dead(database_url: str) -> None:
    engine = store.get_engine(database_url)
    assert doctor.dead_claims(database_url, 5, LONG, NOW).detail == "no leads are claimed"
    ids = mqls(engine, ["US", "US", "CA"])
    _claim(engine, ids[:1], "route:recent", NOW - timedelta(seconds=30))
    found = doctor.dead_claims(database_url, 5, LONG, NOW)
    assert found.ok, found.line()  # expired 30 s ago: the next route run takes it over
    _claim(engine, ids[1:], "enrich:crashed", NOW - timedelta(hours=2))
    found = doctor.dead_claims(database_url, 5, LONG, NOW)
    assert not found.ok
    assert found.detail.startswith("1 dead claim(s) holding 2 lead(s) (enrich)")
    assert "leadflow claims --release" in (found.fix or "")


def test_audit_passes_then_names_the_first_problem(database_url: str) -> None:
    found = doctor.audit(database_url, 10)
    assert found.ok and found.detail.startswith("ledger OK: 0 batches"), found.line()
    mqls(store.get_engine(database_url), ["US"])  # a lead no capture batch inserted
    found = doctor.audit(database_url, 10)
    assert not found.ok
    assert "1 leads stored but lead batches inserted 0" in found.detail
    assert "`leadflow audit`" in (found.fix or "")


# --------------------------------------------------------------------------- this host


def test_drop_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("LEADFLOW_HOME", str(tmp_path / "home"))
    current = settings.get_settings()
    found = doctor.drop_folders(current)
    assert not found.ok and str(current.inbox_dir / "activities") in found.detail
    for path in current.drop_folders().values():
        path.mkdir(parents=True)
    assert doctor.drop_folders(current).ok


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_public_url_answers_or_names_the_problem(site: tuple[str, type[_Health]]) -> None:
    base, handler = site
    default = "http://127.0.0.1:8080"
    assert doctor.public_url(base, default, 3).detail == f"{base}/healthz answered 200"
    handler.status = 503
    found = doctor.public_url(base, default, 3)
    assert not found.ok and "answered HTTP 503" in found.detail
    nobody = f"http://127.0.0.1:{free_port()}"
    found = doctor.public_url(nobody, default, 3)
    assert not found.ok and "does not answer" in found.detail and "leadflow serve" in found.fix
    found = doctor.public_url(default, default, 3)
    assert not found.ok and found.detail.startswith("not set")


class _LoginSink(MailSink):
    """The MailSink, asking for a login (user ``ops``, password ``right``)."""

    def __enter__(self) -> _LoginSink:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        def check(server, session, envelope, mechanism, data) -> AuthResult:
            good = isinstance(data, LoginPassword) and (data.login, data.password) == (
                b"ops",
                b"right",
            )
            return AuthResult(success=good, handled=False)

        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, authenticator=check, auth_require_tls=False
        )
        self._controller.start()
        return self


def test_smtp_without_login() -> None:
    with MailSink() as sink:
        found = doctor.smtp("leadflow-smtp", sink.notifier(), 5)
        assert found.ok, found.line()
        assert found.detail == f"127.0.0.1:{sink.port} answered EHLO (no mail sent)"
        wants_tls = sink.notifier().model_copy(update={"starttls": True})
        found = doctor.smtp("leadflow-smtp", wants_tls, 5)
        assert not found.ok and "STARTTLS" in (found.fix or ""), found.line()
        assert sink.received == []
    port = free_port()
    gone = sink.notifier().model_copy(update={"port": port})
    found = doctor.smtp("leadflow-smtp", gone, 5)
    assert not found.ok and f"nothing answers at 127.0.0.1:{port}" in (found.fix or "")


def test_smtp_login_right_and_wrong() -> None:
    with _LoginSink() as sink:
        right = sink.notifier().model_copy(
            update={"username": "ops", "password": SecretStr("right")}
        )
        found = doctor.smtp("leadflow-smtp", right, 5)
        assert found.ok and found.detail.endswith("answered EHLO + login (no mail sent)")
        wrong = right.model_copy(update={"password": SecretStr("wrong")})
        found = doctor.smtp("leadflow-smtp", wrong, 5)
        assert not found.ok
        assert found.line().startswith("FAIL smtp leadflow-smtp: leadflow-smtp: 535 ")
        assert "username/password" in (found.fix or "") and "wrong" not in found.line()
        assert sink.received == []


def test_a_check_that_hangs_or_raises_is_one_failed_line() -> None:
    started = time.monotonic()
    (hung,) = doctor.guarded("slow", lambda: time.sleep(30), 0.3)
    assert time.monotonic() - started < 2
    assert not hung.ok and hung.detail == "no answer within 0.3 s"

    def broken() -> doctor.Finding:
        raise OSError("disk on fire")

    (raised,) = doctor.guarded("broken", broken, 2)
    assert raised.line() == "FAIL broken: OSError: disk on fire — fix: see the error"


# --------------------------------------------------------------------------- which database


def test_database_label_never_shows_a_password(tmp_path: Path) -> None:
    url = "postgresql://leads:s3cret@db-host:5433/leads?options=-csearch_path%3Dx"
    assert settings.database_label(url) == "postgresql://db-host:5433/leads"
    assert settings.database_label(f"sqlite:///{tmp_path}/x.db") == f"{tmp_path}/x.db"


@pytest.fixture
def dead_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Prefect API configured (environment and settings) where nothing listens."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", api)
    settings._default_block_url.cache_clear()
    with temporary_settings({PREFECT_API_URL: api}):
        yield api
    settings._default_block_url.cache_clear()


def test_environment_wins_over_a_configured_server(sqlite_url: str, dead_api: str) -> None:
    found = settings.get_settings()  # no API call: the variable comes first
    assert (found.database_url, found.database_source) == (
        sqlite_url,
        "from LEADFLOW_DATABASE_URL",
    )


def test_a_configured_server_that_does_not_answer_is_one_line(
    monkeypatch: pytest.MonkeyPatch, dead_api: str
) -> None:
    monkeypatch.delenv("LEADFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("LEADFLOW_DATABASE_BLOCK", raising=False)
    with pytest.raises(ValueError) as raised:
        settings.get_settings()
    message = str(raised.value)
    assert message.startswith(f"PREFECT_API_URL={dead_api}: the Prefect API does not answer")
    assert "\n" not in message and "LEADFLOW_DATABASE_URL" in message


def test_explain_names_the_database_on_a_miss_and_in_json(
    capsys: pytest.CaptureFixture, sqlite_url: str
) -> None:
    code, out, err = run_cli(capsys, "explain", "ann.buyer@acme.com")
    path = sqlite_url.removeprefix("sqlite:///")
    assert code == 2 and out == ""
    assert err.strip() == (
        "leadflow: no lead with id, email or external id 'a…@acme.com' "
        f"in {path} (from LEADFLOW_DATABASE_URL)"
    )
    (lead,) = mqls(store.get_engine(sqlite_url), ["US"])
    code, out, _ = run_cli(capsys, "explain", f"lead{lead}@buyer{lead}.com", "--json")
    data = json.loads(out)
    assert code == 0 and data["lead"]["id"] == lead
    assert (data["database"], data["database_source"]) == (path, "from LEADFLOW_DATABASE_URL")
