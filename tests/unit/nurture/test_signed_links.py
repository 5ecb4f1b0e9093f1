"""Signed links (leadflow/links.py, leadflow/nurture/unsubscribe.py) and the Public Site block
(blocks/site.py) without a Prefect server: tokens and their purposes, where the base URL and
the secret come from, rotation windows, and ``blocks init``'s plan from the environment. The
block read through a real Prefect API, across two hosts' processes, is e2e/test_two_hosts.py."""

from __future__ import annotations

import hashlib
import hmac
import stat
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr, ValidationError

from blocks import registry
from blocks.site import LeadflowSite, PreviousSecret
from leadflow import links
from leadflow.config import ConfigError
from leadflow.nurture import unsubscribe

NOW = datetime(2026, 11, 24, 13, 0, tzinfo=UTC)
KEY = b"k" * 32


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host with no Prefect server and no link variables: the demo."""
    for name in ("PREFECT_API_URL", links.URL_ENV, links.SECRET_ENV, links.BLOCK_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # no profile with a server
    monkeypatch.setenv("LEADFLOW_HOME", str(tmp_path / "home"))
    links.forget()
    return tmp_path / "home"


def test_an_unsubscribe_token_is_the_same_hmac_as_before_so_mailed_links_keep_working():
    expected = hmac.new(KEY, b"unsubscribe:42", hashlib.sha256).hexdigest()[:32]
    assert unsubscribe.token(42, KEY) == links.sign("unsubscribe", "42", KEY) == expected
    assert unsubscribe.valid(42, expected, KEY) and not unsubscribe.valid(43, expected, KEY)


def test_a_token_is_valid_for_its_purpose_only():
    token = links.sign("unsubscribe", "42", KEY)
    assert links.sign("booking", "42", KEY) != token
    for bad in ("", "Unsubscribe", "a:b", "x" * 41):
        with pytest.raises(ValueError, match="link purpose"):
            links.sign(bad, "42", KEY)


def test_the_demo_signs_with_a_key_file_of_its_own_and_the_local_url(host, monkeypatch):
    assert links.block_name() is None
    assert unsubscribe.public_url() == "http://127.0.0.1:8080"
    token = unsubscribe.token(7)
    key = host / "var" / "unsubscribe.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert unsubscribe.valid(7, token) and not unsubscribe.valid(8, token)
    assert links.describe()["secret_from"] == "demo key file"


def test_the_environment_wins_and_writes_no_key_file(host, monkeypatch):
    monkeypatch.setenv(links.URL_ENV, "https://leads.example.com/lifecycle/")
    monkeypatch.setenv(links.SECRET_ENV, "an-environment-secret")
    assert unsubscribe.public_url() == "https://leads.example.com/lifecycle"
    assert unsubscribe.link(5) == (
        "https://leads.example.com/lifecycle/unsubscribe?lead=5&t="
        + links.sign("unsubscribe", "5", b"an-environment-secret")
    )
    assert not (host / "var" / "unsubscribe.key").exists()
    for bad in ("leads.example.com", "ftp://leads.example.com", "https://", "https://a/?x=1"):
        monkeypatch.setenv(links.URL_ENV, bad)
        with pytest.raises(ConfigError, match=f"^{links.URL_ENV}: "):
            unsubscribe.public_url()


def test_a_configured_prefect_api_that_does_not_answer_is_one_line_not_a_host_key(
    host, monkeypatch
):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    assert links.block_name() == "leadflow-site"
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        unsubscribe.token(7)
    message = str(caught.value)
    assert "\n" not in message and "block 'leadflow-site'" in message
    assert f"127.0.0.1:{port}" in message and "does not answer" in message
    assert time.monotonic() - started < 60
    assert not (host / "var" / "unsubscribe.key").exists()


def test_previous_secrets_verify_until_they_retire():
    old, older = b"o" * 20, b"p" * 20
    found = links.Secrets(KEY, ((old, NOW + timedelta(days=1)), (older, NOW)))
    assert found.accepted(NOW) == [KEY, old]  # retire_after is exclusive
    assert found.accepted(NOW + timedelta(days=2)) == [KEY]


def test_rotation_keeps_the_old_secret_for_the_window_and_drops_retired_ones():
    site = LeadflowSite(
        public_url="https://leads.example.com/",
        secret=SecretStr("s" * 20),
        previous_secrets=[
            PreviousSecret(secret=SecretStr("r" * 20), retire_after=NOW - timedelta(hours=1)),
            PreviousSecret(secret=SecretStr("q" * 20), retire_after=NOW + timedelta(hours=1)),
        ],
    )
    assert site.public_url == "https://leads.example.com"
    rotated = site.rotated(timedelta(days=7), NOW)
    assert rotated.secret.get_secret_value() not in ("s" * 20, "")
    assert len(rotated.secret.get_secret_value()) >= 32
    assert [(p.secret.get_secret_value(), p.retire_after) for p in rotated.previous_secrets] == [
        ("s" * 20, NOW + timedelta(days=7)),
        ("q" * 20, NOW + timedelta(hours=1)),
    ]
    at_once = site.rotated(timedelta(0), NOW)
    assert [p.secret.get_secret_value() for p in at_once.previous_secrets] == ["q" * 20]
    assert "s" * 20 not in repr(rotated) and "q" * 20 not in repr(rotated)


def test_the_block_refuses_a_bad_url_or_a_short_secret():
    with pytest.raises(ValidationError, match="public_url"):
        LeadflowSite(public_url="leads.example.com", secret=SecretStr("s" * 20))
    with pytest.raises(ValidationError, match="at least 16"):
        LeadflowSite(public_url="https://leads.example.com", secret=SecretStr("short"))


def test_blocks_init_plans_the_site_from_the_environment(host, monkeypatch):
    assert registry.PLANS["leadflow-site"][1]() is None  # no URL: skipped, said so
    monkeypatch.setenv(links.URL_ENV, "https://leads.example.com/")
    generated = registry.PLANS["leadflow-site"][1]()
    again = registry.PLANS["leadflow-site"][1]()
    assert generated.public_url == "https://leads.example.com"
    assert generated.secret.get_secret_value() != again.secret.get_secret_value()
    monkeypatch.setenv(links.SECRET_ENV, "a-team-wide-secret-value")
    assert registry.PLANS["leadflow-site"][1]().secret.get_secret_value() == (
        "a-team-wide-secret-value"
    )
    monkeypatch.setenv(links.SECRET_ENV, "short")
    with pytest.raises(ConfigError, match=f"^{links.SECRET_ENV}: at least 16"):
        registry.PLANS["leadflow-site"][1]()
    monkeypatch.delenv(links.SECRET_ENV)
    monkeypatch.setenv(links.URL_ENV, "leads.example.com")
    with pytest.raises(ConfigError, match=f"^{links.URL_ENV}: "):
        registry.PLANS["leadflow-site"][1]()
