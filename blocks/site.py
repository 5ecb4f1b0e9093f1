"""The public site as a Prefect block: the base URL the world reaches ``leadflow serve`` at and
the secrets links are signed with, shared by every host (``leadflow/links.py`` reads it).

``leadflow blocks init`` creates it (name ``leadflow-site``) from ``LEADFLOW_PUBLIC_URL`` and
``LEADFLOW_UNSUBSCRIBE_SECRET`` (a random secret when that is unset); ``leadflow blocks
rotate-secret [--keep-days N]`` makes a new secret and keeps the old one verifying for N days
(default 30), so the links already in inboxes keep working for that long.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr, field_validator

from leadflow import links
from leadflow.config import ConfigError

MIN_SECRET_LENGTH = 16
DEFAULT_KEEP_DAYS = 30.0


class PreviousSecret(BaseModel):
    """A secret links were signed with before a rotation: they verify until ``retire_after``."""

    secret: SecretStr
    retire_after: datetime

    @field_validator("retire_after")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class LeadflowSite(Block):
    """Public base URL (``https://leads.example.com``) and link-signing secrets."""

    _block_type_name: ClassVar[str] = "Leadflow Public Site"
    _description: ClassVar[str] = (
        "Where leadflow serve is reached from outside, and the secrets its links are signed "
        "with (current, and previous ones still honoured until they retire)."
    )

    public_url: str = Field(description="Base URL of `leadflow serve` as recipients reach it")
    secret: SecretStr = Field(description="Signs new links")
    previous_secrets: list[PreviousSecret] = Field(
        default_factory=list, description="Old secrets: links signed with them verify until"
    )

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return links.check_public_url(value, "public_url")

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"secret: at least {MIN_SECRET_LENGTH} characters")
        return value

    def rotated(self, keep: timedelta, now: datetime) -> LeadflowSite:
        """A new secret; the current one verifies until ``now + keep`` (not at all when
        ``keep`` is 0); previous secrets already retired are dropped."""
        kept = [p for p in self.previous_secrets if p.retire_after > now]
        if keep > timedelta(0):
            kept.insert(0, PreviousSecret(secret=self.secret, retire_after=now + keep))
        return LeadflowSite(
            public_url=self.public_url,
            secret=SecretStr(links.new_secret()),
            previous_secrets=kept,
        )


def rotate(
    name: str | None = None, keep_days: float = DEFAULT_KEEP_DAYS, now: datetime | None = None
) -> dict[str, Any]:
    """Rotate the secret of the saved block ``name`` (default ``LEADFLOW_SITE_BLOCK`` or
    ``leadflow-site``); what changed, without any secret."""
    name = name or links.block_name() or links.SITE_BLOCK
    if keep_days < 0:
        raise ConfigError(f"--keep-days {keep_days}: must be >= 0")
    now = now or datetime.now(UTC)
    try:
        site = LeadflowSite.load(name)
    except ValueError:
        raise ConfigError(
            f"no {links.SITE_SLUG} block named {name!r}: create it with "
            f"`{links.URL_ENV}=https://... leadflow blocks init`"
        ) from None
    fresh = site.rotated(timedelta(days=keep_days), now)
    fresh.save(name, overwrite=True)
    links.forget()
    return {
        "block": name,
        "rotated_at": now.isoformat(),
        "previous_secrets": [
            {"retire_after": p.retire_after.isoformat()} for p in fresh.previous_secrets
        ],
    }
