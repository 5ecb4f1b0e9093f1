"""Unsubscribe links: a signed token per lead, checked by the ``/unsubscribe`` endpoint.

Every nurture email carries ``List-Unsubscribe`` (RFC 2369) and ``List-Unsubscribe-Post``
(RFC 8058, one click) pointing at ``<public url>/unsubscribe?lead=<id>&t=<token>``; the token
is a signature of the lead id under the purpose ``unsubscribe`` (``leadflow/links.py``), so
nobody can unsubscribe someone else by guessing ids. The public URL and the secret come from
``LEADFLOW_PUBLIC_URL`` / ``LEADFLOW_UNSUBSCRIBE_SECRET``, else the Public Site block
(``leadflow-site``) when a Prefect server is configured, else the demo's defaults
(``http://127.0.0.1:8080`` and ``var/unsubscribe.key``); see ``leadflow/links.py``.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlencode

from leadflow import links

DEFAULT_PUBLIC_URL = links.DEFAULT_PUBLIC_URL
PURPOSE = "unsubscribe"


def secret() -> bytes:
    """The secret new unsubscribe links are signed with."""
    return links.signing_secret()


def token(lead_id: int, key: bytes | None = None) -> str:
    return links.sign(PURPOSE, str(int(lead_id)), key)


def valid(lead_id: int, candidate: str, key: bytes | None = None) -> bool:
    """Whether ``candidate`` is the lead's token: under ``key`` if given, else under the
    current secret or a previous one not yet retired."""
    if key is not None:
        return hmac.compare_digest(token(lead_id, key), str(candidate))
    return links.verify(PURPOSE, str(int(lead_id)), candidate)


def public_url() -> str:
    return links.public_url()


def link(lead_id: int, key: bytes | None = None, base: str | None = None) -> str:
    query = urlencode({"lead": int(lead_id), "t": token(lead_id, key)})
    return f"{(base or public_url()).rstrip('/')}/unsubscribe?{query}"


def headers(url: str) -> dict[str, str]:
    """The two headers that make mail clients show a working unsubscribe button."""
    return {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
