"""Unsubscribe links: a signed token per lead, checked by the ``/unsubscribe`` endpoint.

Every nurture email carries ``List-Unsubscribe`` (RFC 2369) and ``List-Unsubscribe-Post``
(RFC 8058, one click) pointing at ``<public url>/unsubscribe?lead=<id>&t=<token>``; the token
is an HMAC of the lead id, so nobody can unsubscribe someone else by guessing ids. The secret
is ``LEADFLOW_UNSUBSCRIBE_SECRET``, else one generated once and kept in
``var/unsubscribe.key`` (mode 600), so the demo needs no setup. The public URL is
``LEADFLOW_PUBLIC_URL`` (default the local ``leadflow serve`` address).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import cache
from pathlib import Path
from urllib.parse import urlencode

from leadflow.settings import get_settings

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"


@cache
def _secret_from(path: str) -> bytes:
    key = Path(path)
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return key.read_text().strip().encode()


def secret() -> bytes:
    if env := os.environ.get("LEADFLOW_UNSUBSCRIBE_SECRET"):
        return env.encode()
    return _secret_from(str(get_settings().var_dir / "unsubscribe.key"))


def token(lead_id: int, key: bytes | None = None) -> str:
    digest = hmac.new(key or secret(), f"unsubscribe:{int(lead_id)}".encode(), hashlib.sha256)
    return digest.hexdigest()[:32]


def valid(lead_id: int, candidate: str, key: bytes | None = None) -> bool:
    return hmac.compare_digest(token(lead_id, key), str(candidate))


def public_url() -> str:
    return (os.environ.get("LEADFLOW_PUBLIC_URL") or DEFAULT_PUBLIC_URL).rstrip("/")


def link(lead_id: int, key: bytes | None = None, base: str | None = None) -> str:
    query = urlencode({"lead": int(lead_id), "t": token(lead_id, key)})
    return f"{base or public_url()}/unsubscribe?{query}"


def headers(url: str) -> dict[str, str]:
    """The two headers that make mail clients show a working unsubscribe button."""
    return {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
