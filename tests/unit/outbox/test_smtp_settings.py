"""SMTP from the environment (``leadflow blocks init``'s leadflow-smtp block): STARTTLS on 587
by default, LEADFLOW_SMTP_SSL for TLS from the start on 465, never both; bad values are one
line. Delivery over both is e2e/test_smtp_tls.py."""

from __future__ import annotations

import pytest

from blocks import registry
from leadflow.config import ConfigError


def test_smtp_environment_ssl_defaults_and_refusals(monkeypatch):
    monkeypatch.setenv("LEADFLOW_SMTP_HOST", "smtp.example.com")
    for name in ("SSL", "STARTTLS", "PORT", "CA_FILE"):
        monkeypatch.delenv(f"LEADFLOW_SMTP_{name}", raising=False)
    plain = registry._smtp()
    assert (plain.port, plain.starttls, plain.ssl, plain.ca_file) == (587, True, False, None)
    monkeypatch.setenv("LEADFLOW_SMTP_SSL", "true")
    tls = registry._smtp()
    assert (tls.port, tls.starttls, tls.ssl) == (465, False, True)
    monkeypatch.setenv("LEADFLOW_SMTP_STARTTLS", "true")
    with pytest.raises(ConfigError, match="LEADFLOW_SMTP_SSL=true and LEADFLOW_SMTP_STARTTLS"):
        registry._smtp()
    monkeypatch.setenv("LEADFLOW_SMTP_STARTTLS", "maybe")
    with pytest.raises(ConfigError, match="LEADFLOW_SMTP_STARTTLS='maybe'"):
        registry._smtp()
    monkeypatch.delenv("LEADFLOW_SMTP_STARTTLS")
    monkeypatch.setenv("LEADFLOW_SMTP_PORT", "46five")
    with pytest.raises(ConfigError, match="LEADFLOW_SMTP_PORT='46five'"):
        registry._smtp()
