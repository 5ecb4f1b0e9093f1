"""Calling other people's HTTP APIs politely: retries with backoff and jitter that honour
Retry-After, a rate limit, and a circuit breaker that stops calling a provider that is down.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class HttpError(RuntimeError):
    """A request that failed for good (after its retries); ``status`` is None for network errors."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def backoff_delay(attempt: int, base: float, cap: float, retry_after: float | None) -> float:
    """Exponential backoff with jitter; a server's Retry-After wins when it asks for more."""
    delay = min(cap, base * (2**attempt)) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap) if cap > 0 else retry_after)
    return delay


class RateLimiter:
    """At most ``rate`` calls per second across threads (evenly spaced)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep

    def wait(self) -> None:
        if self.interval == 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; stays open for the rest of the run."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.failures = 0
        self.opened = False
        self._lock = threading.Lock()

    def success(self) -> None:
        with self._lock:
            self.failures = 0

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.threshold and self.failures >= self.threshold:
                self.opened = True


def request_with_retries(
    session: Any,
    method: str,
    url: str,
    *,
    params: dict[str, Any] | None = None,
    json: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float,
    max_retries: int,
    backoff: float,
    max_backoff: float,
    limiter: RateLimiter | None = None,
    breaker: CircuitBreaker | None = None,
    sleep: Callable[[float], None] = time.sleep,
    ok_status: frozenset[int] = frozenset(),
) -> Any:
    """Send a request; retry 429/5xx, connection errors and timeouts, honouring Retry-After.

    Returns the response for 2xx/3xx and for any status in ``ok_status`` (e.g. 404 when
    "not found" is an answer). Raises ``HttpError`` otherwise. With a ``breaker``, every
    failed attempt counts against it, and no attempt is made once it is open.
    """
    import requests

    attempt = 0
    while True:
        if breaker is not None and breaker.opened:
            raise HttpError(f"{method} {url}: not called, the provider's circuit is open")
        if limiter is not None:
            limiter.wait()
        try:
            response = session.request(
                method, url, params=params, json=json, headers=headers, timeout=timeout
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            if breaker is not None:
                breaker.failure()
            if attempt >= max_retries:
                raise HttpError(
                    f"{method} {url}: {type(exc).__name__} after {attempt + 1} attempts"
                ) from exc
            wait = backoff_delay(attempt, backoff, max_backoff, None)
        else:
            status = response.status_code
            if status in ok_status or (status < 400 and status not in RETRY_STATUS):
                if breaker is not None:
                    breaker.success()
                return response
            if breaker is not None and status != 429:  # "slow down" is not an outage
                breaker.failure()
            if status not in RETRY_STATUS:
                raise HttpError(f"{method} {response.url}: HTTP {status}", status)
            if attempt >= max_retries:
                raise HttpError(
                    f"{method} {response.url}: HTTP {status} after {attempt + 1} attempts", status
                )
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            wait = backoff_delay(attempt, backoff, max_backoff, retry_after)
            log.info("%s %s answered %s; retrying in %.1fs", method, url, status, wait)
        sleep(wait)
        attempt += 1
