"""Booking links' tokens: unguessable, signed, single-purpose, expiring.

A booking link is ``/book/<token>`` with ``token = <id>.<expiry>.<signature>``: ``id`` is 96
random bits (``booking_links.token_id``, which leads to the lead: no lead id or address is ever
in a link), ``expiry`` the Unix second it stops working (hex), ``signature`` the HMAC of both
under the ``book`` purpose (``leadflow.links``: the Public Site block's secret, so a link made
by a worker on one host opens on ``leadflow serve`` on another, and the secret's rotation
window applies). A reschedule / cancel link is ``/booking/<manage token>``: a meeting's own
random ``manage_id`` signed under ``booking-manage``. A form's hidden field is the page's token
signed under ``booking-form``: a post without it (a cross-site form cannot read the page) is
refused. A token signed for one purpose is never valid for another.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

from leadflow import links

BOOK = "book"
MANAGE = "booking-manage"
FORM = "booking-form"
_BOOK = re.compile(r"([A-Za-z0-9_-]{16})\.([0-9a-f]{1,12})\.([0-9a-f]{32})")
_MANAGE = re.compile(r"([A-Za-z0-9_-]{16})\.([0-9a-f]{32})")
_FORM = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    """A fresh random id: 96 bits, 16 URL-safe characters."""
    return secrets.token_urlsafe(12)


def book_token(token_id: str, expires_at: datetime) -> str:
    """The booking token for a link row (made again from the row whenever it is needed)."""
    expiry = f"{int(expires_at.timestamp()):x}"
    return f"{token_id}.{expiry}.{links.sign(BOOK, f'{token_id}:{expiry}')}"


def read_book_token(token: str, now: datetime | None = None) -> str | None:
    """The link's ``token_id`` when ``token`` is well formed, signed and not expired, else
    None (the caller answers every None the same way: a 403 with no detail)."""
    match = _BOOK.fullmatch(token or "")
    if not match:
        return None
    token_id, expiry, signature = match.groups()
    moment = now or datetime.now(UTC)
    if int(expiry, 16) <= moment.timestamp():
        return None
    if not links.verify(BOOK, f"{token_id}:{expiry}", signature, moment):
        return None
    return token_id


def manage_token(manage_id: str) -> str:
    return f"{manage_id}.{links.sign(MANAGE, manage_id)}"


def read_manage_token(token: str) -> str | None:
    """The meeting's ``manage_id`` for a valid reschedule / cancel token, else None."""
    match = _MANAGE.fullmatch(token or "")
    if not match or not links.verify(MANAGE, match.group(1), match.group(2)):
        return None
    return match.group(1)


def form_token(page_token: str) -> str:
    """The hidden field every booking form carries, bound to the page's own token."""
    return links.sign(FORM, page_token)


def form_ok(page_token: str, given: str | None) -> bool:
    return (
        bool(given) and _FORM.fullmatch(given) is not None and links.verify(FORM, page_token, given)
    )


def book_url(token: str) -> str:
    return f"{links.public_url()}/book/{token}"


def manage_url(token: str) -> str:
    return f"{links.public_url()}/booking/{token}"
