"""SMTP over TLS, configured from the environment the way a deployment is
(``LEADFLOW_SMTP_*`` -> ``leadflow blocks init``'s ``leadflow-smtp`` block, saved and loaded
through the session's Prefect API), against aiosmtpd on loopback with a self-signed
certificate made for the test: STARTTLS and TLS from the start (the port-465 style, here on a
free port), each with a login. A message is received in each mode; a wrong password, or a
certificate the block does not trust, leaves the message in the outbox with one line naming
the block, and nothing is lost."""

from __future__ import annotations

import ssl
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from blocks import registry
from blocks.notifier import SmtpNotifier
from leadflow import store
from leadflow import tables as t
from leadflow.outbox import sender
from leadflow.outbox import store as outbox

from helpers import free_port

NOW = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)
USER, PASSWORD = "leadflow", "right-password"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (subjectAltName IP), made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Sink:
    """Keeps what it receives; logins succeed with USER/PASSWORD only."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.logins: list[tuple[str, bool]] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append(envelope.content)
        return "250 Message accepted"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        ok = (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
        self.logins.append((auth_data.login.decode(), ok))
        return AuthResult(success=ok, handled=False)


def start_server(mode: str, certificate: tuple[Path, Path], sink: Sink, port: int):
    from aiosmtpd.controller import Controller

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    common = dict(
        hostname="127.0.0.1", port=port, authenticator=sink.authenticate, auth_required=True
    )
    if mode == "starttls":
        controller = Controller(sink, tls_context=context, require_starttls=True, **common)
    else:
        # TLS from the start: aiosmtpd does not count it as TLS for AUTH; it is.
        controller = Controller(sink, ssl_context=context, auth_require_tls=False, **common)
    controller.start()
    return controller


def smtp_block(monkeypatch, mode: str, port: int, password: str, ca_file: Path | None):
    """The ``leadflow-smtp`` block as ``leadflow blocks init`` makes it from the environment,
    saved to the Prefect API and loaded back (so it knows its name)."""
    for name in ("SSL", "STARTTLS", "CA_FILE", "PORT"):
        monkeypatch.delenv(f"LEADFLOW_SMTP_{name}", raising=False)
    monkeypatch.setenv("LEADFLOW_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("LEADFLOW_SMTP_PORT", str(port))
    monkeypatch.setenv("LEADFLOW_SMTP_USERNAME", USER)
    monkeypatch.setenv("LEADFLOW_SMTP_PASSWORD", password)
    monkeypatch.setenv("LEADFLOW_SMTP_FROM", "leadflow@example.com")
    if mode == "ssl":
        monkeypatch.setenv("LEADFLOW_SMTP_SSL", "true")
    if ca_file is not None:
        monkeypatch.setenv("LEADFLOW_SMTP_CA_FILE", str(ca_file))
    block = registry._smtp()
    assert (block.ssl, block.starttls) == (mode == "ssl", mode == "starttls")
    block.save("leadflow-smtp", overwrite=True)
    return SmtpNotifier.load("leadflow-smtp")


def queue_one(engine) -> None:
    frame = pd.DataFrame(
        {
            "idempotency_key": ["tls-1"],
            "kind": "owner_notification",
            "channel": "email",
            "recipient": ["rep@example.com"],
            "lead_id": [1],
            "subject": "New lead",
            "body": "hello over TLS",
            "payload": [{}],
        }
    )
    with engine.begin() as conn:
        assert outbox.enqueue(conn, frame, now=NOW) == 1


def outbox_row(engine) -> dict:
    with engine.connect() as conn:
        row = conn.execute(select(t.outbox.c.status, t.outbox.c.last_error)).one()
    return dict(row._mapping)


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_tls_modes_deliver_and_a_wrong_password_or_untrusted_certificate_loses_nothing(
    mode, certificate, sqlite_url, monkeypatch
):
    engine = store.get_engine(sqlite_url)
    queue_one(engine)
    sink, port = Sink(), free_port()
    controller = start_server(mode, certificate, sink, port)
    try:
        # A wrong password: put back untried, one line naming the block.
        wrong = smtp_block(monkeypatch, mode, port, "wrong-password", certificate[0])
        report = sender.send_due(engine, [wrong], 10, NOW)
        assert (report.sent, report.deferred, report.dead) == (0, 1, 0)
        row = outbox_row(engine)
        assert row["status"] == "pending" and "\n" not in row["last_error"]
        assert row["last_error"].startswith(
            f"SMTP block 'leadflow-smtp' (127.0.0.1:{port}): login refused (535)"
        ), row["last_error"]
        assert "wrong-password" not in row["last_error"]
        # smtplib tries each mechanism the server offers (PLAIN, LOGIN): all refused.
        assert sink.logins and set(sink.logins) == {(USER, False)} and sink.received == []
        # The right password but no CA file: the self-signed certificate is not trusted.
        untrusted = smtp_block(monkeypatch, mode, port, PASSWORD, None)
        later = NOW.replace(hour=14)
        report = sender.send_due(engine, [untrusted], 10, later)
        assert (report.sent, report.deferred) == (0, 1)
        row = outbox_row(engine)
        assert row["status"] == "pending" and "SSLCertVerificationError" in row["last_error"]
        assert row["last_error"].startswith("SMTP block 'leadflow-smtp'")
        assert sink.received == []
        # Trusted and logged in: delivered, once.
        good = smtp_block(monkeypatch, mode, port, PASSWORD, certificate[0])
        report = sender.send_due(engine, [good], 10, later.replace(hour=15))
        assert (report.sent, report.deferred, report.dead) == (1, 0, 0)
    finally:
        controller.stop()
    assert outbox_row(engine)["status"] == "sent"
    assert len(sink.received) == 1 and b"hello over TLS" in sink.received[0]
    assert sink.logins[-1] == (USER, True)
