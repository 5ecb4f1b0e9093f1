"""Firmographic providers as Prefect blocks: where company data comes from, and the
credentials to get it. Save one in the UI or with ``.save(name)``; point the enrichment
hop at it with ``leadflow enrich --provider block:NAME``.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

DEFAULT_FIELDS = {
    "industry": "industry",
    "employees": "employees",
    "revenue": "revenue",
    "country": "country",
}


class HttpFirmographics(Block):
    """A company-data API looked up by domain: ``GET {base_url}{lookup_path}`` answering
    JSON with the fields below (404 = unknown company), optionally a batch endpoint
    ``POST {base_url}{batch_path}`` with ``{"domains": [...]}`` answering
    ``{"results": {domain: {...} | null}}``."""

    _block_type_name: ClassVar[str] = "Leadflow HTTP Firmographics"
    _description: ClassVar[str] = "Company firmographics from an HTTP API, looked up by domain."

    base_url: str
    api_key: SecretStr | None = None
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    lookup_path: str = "/companies/{domain}"
    batch_path: str | None = None
    batch_size: int = Field(default=50, ge=1, le=1000)
    rate_limit_per_second: float = Field(default=10.0, gt=0)
    concurrency: int = Field(default=4, ge=1, le=64)
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    backoff_seconds: float = Field(default=0.5, ge=0)
    max_backoff_seconds: float = Field(default=30.0, ge=0)
    circuit_breaker_failures: int = Field(default=5, ge=1)
    cache_ttl_days: float = Field(default=30.0, gt=0)
    not_found_ttl_days: float = Field(default=7.0, gt=0)
    fields: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_FIELDS))

    @property
    def provider_id(self) -> str:
        return f"http:{self.base_url.rstrip('/')}"


class FileFirmographics(Block):
    """A firmographics data dump (CSV or Parquet, local path or fsspec URL), by domain."""

    _block_type_name: ClassVar[str] = "Leadflow File Firmographics"
    _description: ClassVar[str] = "Company firmographics from a CSV/Parquet file keyed by domain."

    path: str
    domain_column: str = "domain"
    fields: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_FIELDS))

    @property
    def provider_id(self) -> str:
        return f"file:{self.path}"
