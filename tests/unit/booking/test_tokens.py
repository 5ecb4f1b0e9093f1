"""Booking tokens: signed, expiring, single-purpose, nothing of the lead in them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from leadflow import links
from leadflow.booking import tokens

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("LEADFLOW_UNSUBSCRIBE_SECRET", "a-test-secret")
    monkeypatch.setenv("LEADFLOW_PUBLIC_URL", "https://leads.example.com/")
    links.forget()


def test_a_token_reads_back_until_it_expires() -> None:
    token_id = tokens.new_id()
    token = tokens.book_token(token_id, NOW + timedelta(days=14))
    assert tokens.read_book_token(token, NOW) == token_id
    assert tokens.read_book_token(token, NOW + timedelta(days=14)) is None
    assert tokens.book_url(token) == f"https://leads.example.com/book/{token}"


def test_a_changed_expiry_id_or_signature_is_refused() -> None:
    token = tokens.book_token(tokens.new_id(), NOW + timedelta(days=1))
    token_id, expiry, signature = token.split(".")
    later = f"{int(expiry, 16) + 86400:x}"
    assert tokens.read_book_token(f"{token_id}.{later}.{signature}", NOW) is None
    assert tokens.read_book_token(f"{tokens.new_id()}.{expiry}.{signature}", NOW) is None
    assert tokens.read_book_token(f"{token_id}.{expiry}.{'0' * 32}", NOW) is None
    assert tokens.read_book_token("", NOW) is None and tokens.read_book_token("x" * 80, NOW) is None


def test_another_secret_signs_tokens_this_host_refuses(monkeypatch) -> None:
    token = tokens.book_token(tokens.new_id(), NOW + timedelta(days=1))
    monkeypatch.setenv("LEADFLOW_UNSUBSCRIBE_SECRET", "another-secret")
    assert tokens.read_book_token(token, NOW) is None


def test_purposes_do_not_mix() -> None:
    manage_id = tokens.new_id()
    manage = tokens.manage_token(manage_id)
    assert tokens.read_manage_token(manage) == manage_id
    assert tokens.read_book_token(manage, NOW) is None
    book = tokens.book_token(manage_id, NOW + timedelta(days=1))
    assert tokens.read_manage_token(book) is None
    form = tokens.form_token(book)
    assert tokens.form_ok(book, form) and not tokens.form_ok(manage, form)
    assert not tokens.form_ok(book, None) and not tokens.form_ok(book, form.upper())
