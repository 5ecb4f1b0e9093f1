"""Firmographics (industry, employees, revenue, country) for company domains.

Every lookup is per distinct domain, never per lead, and goes through a cache in the
store: a million leads over fifty thousand domains make at most fifty thousand calls, and
a rerun with a warm cache makes none. Whatever a provider sends is checked field by field:
a value that cannot be used leaves the field empty and says why, it never fails the run.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

import pandas as pd
from sqlalchemy import Connection, delete, select, tuple_

from leadflow import http, store
from leadflow import tables as t
from leadflow.capture.normalise import country_code, host_of

FIELDS = ("industry", "employees", "revenue", "country")


@dataclass
class Company:
    """One domain's answer: ``status`` is found | not_found | invalid | unavailable."""

    status: str
    industry: str | None = None
    employees: int | None = None
    revenue: float | None = None
    country: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class LookupStats:
    domains: int = 0
    cached: int = 0
    calls: int = 0
    found: int = 0
    not_found: int = 0
    invalid: int = 0
    unavailable: int = 0
    circuit_open: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_company(payload: Any, fields: dict[str, str], *, text_numbers: bool = False) -> Company:
    """Check a provider's record field by field; unusable values become notes.

    ``text_numbers`` accepts numbers written as text (files have no types); an API that
    sends "500" for a number is sending garbage, and the field stays empty.
    """
    if not isinstance(payload, dict):
        return Company(
            "invalid", notes={"response": f"expected a JSON object, got {type(payload).__name__}"}
        )
    company = Company("found")

    def number(name: str) -> float | None:
        value = payload.get(fields.get(name, name))
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            company.notes[name] = f"{value!r} is not a number"
            return None
        if isinstance(value, str):
            if not text_numbers:
                company.notes[name] = f"{value!r} is text, not a number"
                return None
            try:
                value = float(value.replace(",", ""))
            except ValueError:
                company.notes[name] = f"{value!r} is not a number"
                return None
        if math.isnan(value) or math.isinf(value):
            company.notes[name] = f"{value!r} is not a number"
            return None
        if value < 0:
            company.notes[name] = f"{value!r} is negative"
            return None
        return float(value)

    employees = number("employees")
    if employees is not None:
        if employees != int(employees):
            company.notes["employees"] = f"{employees!r} is not a whole number"
        else:
            company.employees = int(employees)
    company.revenue = number("revenue")
    industry = payload.get(fields.get("industry", "industry"))
    if industry is not None:
        if isinstance(industry, str) and industry.strip() and len(industry) <= 200:
            company.industry = industry.strip()
        else:
            company.notes["industry"] = f"{str(industry)[:40]!r} is not an industry name"
    country = payload.get(fields.get("country", "country"))
    if country is not None:
        code = country_code(country) if isinstance(country, str) else None
        if code:
            company.country = code
        else:
            company.notes["country"] = f"{str(country)[:40]!r} is not a country"
    return company


class Provider(Protocol):
    provider_id: str
    cacheable: bool

    def lookup(self, domains: list[str], stats: LookupStats) -> dict[str, Company]: ...


# --------------------------------------------------------------------------- HTTP


class HttpProvider:
    """Lookups against an HTTP API, rate-limited, retried, behind a circuit breaker."""

    cacheable = True

    def __init__(self, config: Any, session: Any = None, sleep: Any = None) -> None:
        import time

        import requests

        self.config = config
        self.provider_id = config.provider_id
        self.session = session or requests.Session()
        self.sleep = sleep or time.sleep
        self.limiter = http.RateLimiter(config.rate_limit_per_second, sleep=self.sleep)
        self.breaker = http.CircuitBreaker(config.circuit_breaker_failures)
        self.headers = {"Accept": "application/json"}
        if config.api_key is not None:
            key = config.api_key.get_secret_value()
            self.headers[config.auth_header] = f"{config.auth_scheme} {key}".strip()
        self._lock = threading.Lock()

    def _request(self, method: str, path: str, stats: LookupStats, **kwargs: Any) -> Any:
        with self._lock:
            stats.calls += 1
        return http.request_with_retries(
            self.session,
            method,
            self.config.base_url.rstrip("/") + path,
            headers=self.headers,
            timeout=self.config.timeout_seconds,
            max_retries=self.config.max_retries,
            backoff=self.config.backoff_seconds,
            max_backoff=self.config.max_backoff_seconds,
            limiter=self.limiter,
            breaker=self.breaker,
            sleep=self.sleep,
            ok_status=frozenset({404}),
            **kwargs,
        )

    def _one(self, domain: str, stats: LookupStats) -> Company:
        if self.breaker.opened:
            return Company(
                "unavailable", notes={"provider": "circuit open after repeated failures"}
            )
        try:
            response = self._request("GET", self.config.lookup_path.format(domain=domain), stats)
        except http.HttpError as exc:
            return Company("unavailable", notes={"provider": str(exc)})
        if response.status_code == 404:
            return Company("not_found")
        try:
            payload = response.json()
        except ValueError:
            kind = response.headers.get("Content-Type", "unknown content")
            return Company("invalid", notes={"response": f"not JSON ({kind})"})
        return parse_company(payload, self.config.fields)

    def _batch(self, domains: list[str], stats: LookupStats) -> dict[str, Company]:
        if self.breaker.opened:
            return {
                d: Company(
                    "unavailable", notes={"provider": "circuit open after repeated failures"}
                )
                for d in domains
            }
        try:
            response = self._request(
                "POST", self.config.batch_path, stats, json={"domains": domains}
            )
        except http.HttpError as exc:
            return {d: Company("unavailable", notes={"provider": str(exc)}) for d in domains}
        try:
            results = response.json().get("results")
        except (ValueError, AttributeError):
            return {
                d: Company("invalid", notes={"response": "batch answer is not a JSON object"})
                for d in domains
            }
        if isinstance(results, list):
            results = {str(r.get("domain")): r for r in results if isinstance(r, dict)}
        if not isinstance(results, dict):
            return {
                d: Company("invalid", notes={"response": "batch answer has no results"})
                for d in domains
            }
        out = {}
        for domain in domains:
            record = results.get(domain)
            out[domain] = (
                Company("not_found")
                if record is None
                else parse_company(record, self.config.fields)
            )
        return out

    def lookup(self, domains: list[str], stats: LookupStats) -> dict[str, Company]:
        out: dict[str, Company] = {}
        if self.config.batch_path:
            size = self.config.batch_size
            groups = [domains[i : i + size] for i in range(0, len(domains), size)]
            with ThreadPoolExecutor(self.config.concurrency) as pool:
                for answer in pool.map(lambda group: self._batch(group, stats), groups):
                    out.update(answer)
        else:
            with ThreadPoolExecutor(self.config.concurrency) as pool:
                for domain, company in zip(
                    domains, pool.map(lambda d: self._one(d, stats), domains), strict=True
                ):
                    out[domain] = company
        stats.circuit_open = self.breaker.opened
        return out


# --------------------------------------------------------------------------- files


@lru_cache(maxsize=4)
def _file_table(path: str, domain_column: str, stamp: str) -> dict[str, dict[str, Any]]:
    import fsspec

    with fsspec.open(path, "rb") as handle:
        if path.lower().endswith((".parquet", ".pq")):
            frame = pd.read_parquet(handle)
        else:
            frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
    if domain_column not in frame.columns:
        raise ValueError(f"{path}: no {domain_column!r} column (has {list(frame.columns)})")
    frame = frame.astype(object).where(frame.notna(), None)
    table = {}
    for record in frame.to_dict("records"):
        domain = host_of(str(record.get(domain_column) or ""))
        if domain:
            table[domain] = record
    return table


class FileProvider:
    """Lookups in a firmographics file, loaded once per process (and again if it changes)."""

    cacheable = False

    def __init__(self, config: Any) -> None:
        self.config = config
        self.provider_id = config.provider_id

    def lookup(self, domains: list[str], stats: LookupStats) -> dict[str, Company]:
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.config.path)
        info = fs.info(path)
        stamp = f"{info.get('size')}:{info.get('mtime') or info.get('LastModified') or ''}"
        table = _file_table(self.config.path, self.config.domain_column, stamp)
        out = {}
        for domain in domains:
            record = table.get(domain)
            out[domain] = (
                Company("not_found")
                if record is None
                else parse_company(record, self.config.fields, text_numbers=True)
            )
        return out


# --------------------------------------------------------------------------- cache


def read_cache(
    conn: Connection, provider: str, domains: list[str], now: datetime
) -> dict[str, Company]:
    if not domains:
        return {}
    cache = t.firmographics_cache
    found: dict[str, Company] = {}
    for start in range(0, len(domains), 5000):
        part = domains[start : start + 5000]
        rows = conn.execute(
            select(cache)
            .where(cache.c.provider == provider)
            .where(cache.c.domain.in_(part))
            .where(cache.c.expires_at > now)
        ).mappings()
        for row in rows:
            found[row["domain"]] = Company(
                row["status"],
                row["industry"],
                row["employees"],
                row["revenue"],
                row["country"],
                dict(row["notes"] or {}),
            )
    return found


def write_cache(
    conn: Connection,
    provider: str,
    answers: dict[str, Company],
    now: datetime,
    *,
    ttl_days: float,
    not_found_ttl_days: float,
) -> None:
    """Remember answers (not "unavailable" ones: those are asked again next time)."""
    keep = {d: c for d, c in answers.items() if c.status != "unavailable"}
    if not keep:
        return
    cache = t.firmographics_cache
    domains = list(keep)
    for start in range(0, len(domains), 5000):
        part = domains[start : start + 5000]
        conn.execute(
            delete(cache).where(
                tuple_(cache.c.provider, cache.c.domain).in_([(provider, d) for d in part])
            )
        )
    rows = pd.DataFrame(
        {
            "provider": provider,
            "domain": domains,
            "status": [c.status for c in keep.values()],
            "industry": [c.industry for c in keep.values()],
            "employees": pd.array([c.employees for c in keep.values()], dtype="Int64"),
            "revenue": pd.array([c.revenue for c in keep.values()], dtype="Float64"),
            "country": [c.country for c in keep.values()],
            "notes": [c.notes or None for c in keep.values()],
            "fetched_at": pd.Timestamp(now),
            "expires_at": [
                pd.Timestamp(
                    now + timedelta(days=ttl_days if c.status == "found" else not_found_ttl_days)
                )
                for c in keep.values()
            ],
        }
    )
    store.bulk_insert(conn, cache, rows)


def resolve(
    engine: Any,
    provider: Provider | None,
    domains: list[str],
    *,
    now: datetime,
    ttl_days: float = 30.0,
    not_found_ttl_days: float = 7.0,
) -> tuple[dict[str, Company], LookupStats]:
    """Answers for distinct domains: cache first, then the provider for the rest."""
    stats = LookupStats(domains=len(domains))
    if provider is None or not domains:
        return {}, stats
    answers: dict[str, Company] = {}
    if provider.cacheable:
        with engine.connect() as conn:
            answers = read_cache(conn, provider.provider_id, domains, now)
        stats.cached = len(answers)
    missing = [d for d in domains if d not in answers]
    fresh = provider.lookup(missing, stats) if missing else {}
    if provider.cacheable and fresh:
        with engine.begin() as conn:
            write_cache(
                conn,
                provider.provider_id,
                fresh,
                now,
                ttl_days=ttl_days,
                not_found_ttl_days=not_found_ttl_days,
            )
    answers.update(fresh)
    for company in answers.values():
        setattr(stats, company.status, getattr(stats, company.status) + 1)
    return answers, stats
