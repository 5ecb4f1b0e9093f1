"""Signed links: the public base URL every emailed link starts with, and the tokens that make
a link unforgeable (unsubscribe links today; any page that needs a link only its addressee
can use, such as a booking page, signs with its own purpose).

A token is the first 32 hex digits of HMAC-SHA256(secret, ``"<purpose>:<payload>"``).
Purposes are names (``[a-z][a-z0-9-]*``, no colon), so a token made for one purpose is never
valid for another. Verification accepts the current secret and every previous secret whose
``retire_after`` is still ahead: rotating the secret (``leadflow blocks rotate-secret``)
leaves the links already mailed working for the rotation window, then they stop.

Where the base URL and the secret come from, each on its own, first that answers:

1. the environment: ``LEADFLOW_PUBLIC_URL``, ``LEADFLOW_UNSUBSCRIBE_SECRET`` (no previous
   secrets);
2. the Public Site block (``blocks/site.py``; name ``LEADFLOW_SITE_BLOCK``, default
   ``leadflow-site``), read through the Prefect API when one is configured
   (``PREFECT_API_URL`` in the environment or the Prefect profile) or ``LEADFLOW_SITE_BLOCK``
   names it. Every host reads the same block, so a link signed by a worker on one host is
   honoured by ``leadflow serve`` on another. A missing block is a ``ConfigError`` naming it
   and ``leadflow blocks init``, never a quiet fall back to a key of this host's own;
3. the demo, with no Prefect server: ``http://127.0.0.1:8080`` and a key generated once in
   ``var/unsubscribe.key`` (mode 600).

Block reads are cached for ``LEADFLOW_SITE_CACHE_SECONDS`` (default 60), so ``serve`` does not
ask the API on every request; a token that matches no cached secret re-reads the block (at
most once a second), so a link signed just after a rotation is honoured at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets as random_secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from leadflow.config import ConfigError
from leadflow.settings import configured_prefect_api, get_settings, in_clear, read_block

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"
SITE_BLOCK = "leadflow-site"  # the block's default name
SITE_SLUG = "leadflow-public-site"  # its type (blocks/site.py LeadflowSite)
URL_ENV = "LEADFLOW_PUBLIC_URL"
SECRET_ENV = "LEADFLOW_UNSUBSCRIBE_SECRET"
BLOCK_ENV = "LEADFLOW_SITE_BLOCK"
CACHE_ENV = "LEADFLOW_SITE_CACHE_SECONDS"
REFRESH_ON_MISS_SECONDS = 1.0
_PURPOSE = re.compile(r"[a-z][a-z0-9-]{0,39}")


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def check_public_url(value: Any, where: str) -> str:
    """``value`` as a base URL (http or https, a host, no query or fragment), without a
    trailing slash; else a ``ConfigError`` naming ``where`` (a variable or a block field)."""
    text = str(value).strip()
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ConfigError(
            f"{where}: {text!r} is not an http(s) base URL with a host "
            "(e.g. https://leads.example.com)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: {text!r} has a query or fragment; give the base URL only")
    return text.rstrip("/")


def new_secret() -> str:
    """A fresh signing secret: 256 random bits, URL-safe text."""
    return random_secrets.token_urlsafe(32)


# --------------------------------------------------------------------------- the block


@dataclass(frozen=True)
class Secrets:
    """The secret links are signed with and the previous ones that still verify until."""

    current: bytes
    previous: tuple[tuple[bytes, datetime], ...] = ()
    source: str = "demo key file"

    def accepted(self, now: datetime | None = None) -> list[bytes]:
        moment = now or datetime.now(UTC)
        return [self.current] + [key for key, until in self.previous if until > moment]


_lock = threading.Lock()
_cache: dict[str, tuple[float, dict[str, Any] | None]] = {}


def forget() -> None:
    """Drop cached block reads (after a rotation in this process; in tests)."""
    with _lock:
        _cache.clear()


def block_name() -> str | None:
    """The Public Site block this host reads, None when it reads none (the demo)."""
    if name := _env(BLOCK_ENV):
        return name
    return SITE_BLOCK if configured_prefect_api() else None


def _ttl() -> float:
    raw = _env(CACHE_ENV)
    try:
        value = float(raw) if raw is not None else 60.0
    except ValueError:
        raise ConfigError(f"environment variable {CACHE_ENV}={raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"environment variable {CACHE_ENV}={raw!r} must be >= 0")
    return value


def _site(name: str, max_age: float | None = None) -> dict[str, Any]:
    """The block's fields (cached), or a ``ConfigError`` naming it and how to create it."""
    age_limit = _ttl() if max_age is None else min(max_age, _ttl())
    with _lock:
        hit = _cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < age_limit:
            data = hit[1]
        else:
            try:
                data = read_block(name, SITE_SLUG)
            except Exception as exc:
                raise ConfigError(
                    f"cannot read the {SITE_SLUG} block {name!r}: the Prefect API at "
                    f"{configured_prefect_api() or '(temporary)'} does not answer "
                    f"({type(exc).__name__}); start it, or set {URL_ENV} and {SECRET_ENV}"
                ) from None
            _cache[name] = (time.monotonic(), data)
    if data is None:
        raise ConfigError(
            f"no {SITE_SLUG} block named {name!r} on the Prefect API at "
            f"{configured_prefect_api() or '(temporary)'}: links cannot be signed or checked; create "
            f"it with `{URL_ENV}=https://... leadflow blocks init` (it keeps the public URL and "
            "the link-signing secret)"
        )
    return data


def _moment(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _block_secrets(name: str, max_age: float | None = None) -> Secrets:
    data = _site(name, max_age)
    previous = tuple(
        (in_clear(entry["secret"]).encode(), _moment(entry["retire_after"]))
        for entry in data.get("previous_secrets") or []
    )
    return Secrets(in_clear(data["secret"]).encode(), previous, f"block {name!r}")


# --------------------------------------------------------------------------- the two values


@cache
def _secret_from(path: str) -> bytes:
    key = Path(path)
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(random_secrets.token_hex(32))
    return key.read_text().strip().encode()


def secrets(max_age: float | None = None) -> Secrets:
    """The signing secrets: the environment's, else the block's, else the demo key file's."""
    if env := _env(SECRET_ENV):
        return Secrets(env.encode(), (), SECRET_ENV)
    if name := block_name():
        return _block_secrets(name, max_age)
    return Secrets(_secret_from(str(get_settings().var_dir / "unsubscribe.key")))


def signing_secret() -> bytes:
    """The secret new links are signed with."""
    return secrets().current


def public_url() -> str:
    """The base URL of ``leadflow serve`` as the world reaches it, without a trailing slash."""
    if env := _env(URL_ENV):
        return check_public_url(env, URL_ENV)
    if name := block_name():
        return check_public_url(_site(name)["public_url"], f"block {name!r} public_url")
    return DEFAULT_PUBLIC_URL


def describe() -> dict[str, Any]:
    """Where this host's base URL and secret come from (no secret in it), for diagnostics."""
    found = secrets()
    return {
        "public_url": public_url(),
        "public_url_from": URL_ENV if _env(URL_ENV) else (block_name() or "default"),
        "secret_from": found.source,
        "previous_secrets": len(found.accepted()) - 1,
    }


# --------------------------------------------------------------------------- tokens


def sign(purpose: str, payload: str, key: bytes | None = None) -> str:
    """The token for ``payload`` under ``purpose`` (with ``key``, default the current secret)."""
    if not _PURPOSE.fullmatch(purpose):
        raise ValueError(f"link purpose {purpose!r} must match {_PURPOSE.pattern}")
    message = f"{purpose}:{payload}".encode()
    return hmac.new(key or signing_secret(), message, hashlib.sha256).hexdigest()[:32]


def verify(purpose: str, payload: str, token: str, now: datetime | None = None) -> bool:
    """Whether ``token`` was signed for ``payload`` under ``purpose`` with a secret that is
    current or not yet retired at ``now``."""
    candidate = str(token)

    def matches(found: Secrets) -> bool:
        return any(
            hmac.compare_digest(sign(purpose, payload, key), candidate)
            for key in found.accepted(now)
        )

    if matches(secrets()):
        return True
    # A secret rotated since the block was cached: read it again (at most once a second).
    return (
        block_name() is not None
        and not _env(SECRET_ENV)
        and matches(secrets(max_age=REFRESH_ON_MISS_SECONDS))
    )
