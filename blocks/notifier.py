"""Notifiers as Prefect blocks: where messages from the outbox go, and the credentials to get
there. Save one in the UI or with ``.save(name)``; point the sender at it with
``--notifier block:NAME`` (route, sla, nurture, ``leadflow outbox send``) (an SMTP server for email messages, a JSON webhook
for webhook messages; give both to send both). Passwords and tokens are ``SecretStr``: they
never appear in ``repr``, logs or the Prefect UI.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator


class SmtpNotifier(Block):
    """An SMTP server (plain ``smtplib``: works from sync flows, unlike prefect-email's async
    task). ``starttls`` upgrades a plain connection; ``ssl`` connects with TLS from the start
    (port 465); never both. ``ca_file`` is a PEM file of certificates to trust instead of the
    system's (a private CA, or a test server's self-signed certificate)."""

    _block_type_name: ClassVar[str] = "Leadflow SMTP Notifier"
    _description: ClassVar[str] = "Sends leadflow's email messages through an SMTP server."

    host: str
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    from_address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    starttls: bool = True
    ssl: bool = False
    ca_file: str | None = None
    timeout_seconds: float = Field(default=20.0, gt=0)

    @model_validator(mode="after")
    def _one_tls_mode(self) -> SmtpNotifier:
        if self.starttls and self.ssl:
            raise ValueError("choose starttls (port 587) or ssl (port 465), not both")
        return self

    @property
    def channel(self) -> str:
        return "email"


class WebhookNotifier(Block):
    """A JSON webhook: each message's payload is POSTed to ``url`` with an
    ``Idempotency-Key`` header (the message's key), and the token as a bearer token."""

    _block_type_name: ClassVar[str] = "Leadflow Webhook Notifier"
    _description: ClassVar[str] = "POSTs leadflow's webhook messages as JSON."

    url: str = Field(pattern=r"^https?://")
    token: SecretStr | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)

    @property
    def channel(self) -> str:
        return "webhook"


class MaildirNotifier(Block):
    """Email messages delivered into a local Maildir folder instead of a server: for trials
    and the demo (every mail client and ``mutt -f`` reads it), and for reviewing what would
    be sent."""

    _block_type_name: ClassVar[str] = "Leadflow Maildir Notifier"
    _description: ClassVar[str] = "Delivers leadflow's email messages into a local Maildir."

    directory: str
    from_address: str = Field(default="leadflow@localhost", pattern=r"^[^@\s]+@[^@\s]+$")

    @property
    def channel(self) -> str:
        return "email"


NOTIFIERS = (SmtpNotifier, WebhookNotifier, MaildirNotifier)
