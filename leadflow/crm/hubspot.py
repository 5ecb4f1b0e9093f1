"""The HubSpot adapter: contacts, owners and contact properties through ``hubspot-api-client``.

Writes go through the contacts batch upsert keyed by leadflow's unique id property (100
inputs a call, HubSpot's batch limit); reads through the batch read by that property; the
CRM-to-leadflow direction through the search API (``lastmodifieddate`` after a cursor,
oldest first, restarting from the last record seen when a query reaches HubSpot's
10,000-result cap).

Every request passes one gate (``_call``): a client-side limiter keeps to ``calls_per_10s``
in any rolling ten seconds (HubSpot's private-app limit is per ten seconds), the library's
own urllib3 retries are off so each request is counted, a 429 is waited out when HubSpot
says when (``Retry-After``, up to ``max_wait_seconds``), and HubSpot's errors become
``CrmError``s: 401/403 ``AuthError`` (naming a missing scope), 429 ``RateLimited``, 5xx and
no answer transient, other 4xx permanent with HubSpot's message (addresses masked).

A batch HubSpot rejects as a whole (400 "Property values were not valid", or duplicate ids)
because of some inputs is split: records carrying a property HubSpot says does not exist
fail at once, otherwise the batch is halved until each failing record is alone, so the good
records still go. Any other 400 (the id property not unique, say) fails the call as a whole.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import hubspot
import urllib3
from hubspot.crm.contacts import ApiException as ContactsApiException
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchReadInputSimplePublicObjectId,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
)
from hubspot.crm.owners import ApiException as OwnersApiException
from hubspot.crm.properties import ApiException as PropertiesApiException
from urllib3.util.retry import Retry

from leadflow.crm.base import AuthError, CrmError, Outcome, RateLimited, Record, Usage
from leadflow.quarantine import masked

WINDOW_SECONDS = 10.0
API_ERRORS = (ContactsApiException, OwnersApiException, PropertiesApiException)
PERMANENT_CATEGORIES = {"VALIDATION_ERROR", "PROPERTY_DOESNT_EXIST", "INVALID_EMAIL"}
_INVALID = "Property values were not valid:"


class HubSpotAdapter:
    """leadflow's contacts in one HubSpot account (a private app's access token)."""

    name = "hubspot"
    batch_size = 100  # HubSpot's limit for the contacts batch endpoints
    search_limit = 200  # HubSpot's largest search page
    search_cap = 10_000  # results one search query can page through
    owners_page = 100
    searches_per_second = 5

    def __init__(
        self,
        *,
        access_token: str,
        base_url: str = "https://api.hubapi.com",
        id_property: str = "leadflow_id",
        calls_per_10s: int = 100,
        timeout_seconds: float = 20.0,
        max_wait_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.id_property = id_property
        self.calls_per_10s = calls_per_10s
        self.timeout_seconds = timeout_seconds
        self.max_wait_seconds = max_wait_seconds
        self.usage = Usage()
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        self._calls = _Window(calls_per_10s, WINDOW_SECONDS)
        # HubSpot limits its search endpoints apart: five requests a second per token
        self._searches = _Window(self.searches_per_second, 1.0)
        no_retry = Retry(total=0, connect=0, read=0, redirect=0, status=0, other=0)
        client = hubspot.Client.create(
            access_token=access_token, host=self.base_url, retry=no_retry
        )
        # each attribute access builds a new API client (and connection pool): keep one
        self._batch = client.crm.contacts.batch_api
        self._search = client.crm.contacts.search_api
        self._owners = client.crm.owners.owners_api
        self._properties = client.crm.properties.core_api

    # ---- the Adapter protocol ------------------------------------------------------------

    def upsert(self, records: Sequence[Record]) -> list[Outcome]:
        self.usage.records += len(records)
        outcomes: list[Outcome] = []
        for start in range(0, len(records), self.batch_size):
            outcomes += self._upsert_batch(list(records[start : start + self.batch_size]))
        return outcomes

    def read(self, keys: Sequence[str], properties: Sequence[str]) -> dict[str, dict[str, Any]]:
        names = _names(properties, self.id_property)
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), self.batch_size):
            body = BatchReadInputSimplePublicObjectId(
                id_property=self.id_property,
                inputs=[
                    SimplePublicObjectId(id=str(k)) for k in keys[start : start + self.batch_size]
                ],
                properties=names,
                properties_with_history=[],
            )
            answer = self._call("batch read", self._batch.read_with_http_info, body)
            for obj in answer.results or []:
                props = dict(obj.properties or {})
                key = props.get(self.id_property)
                if key is not None:
                    found[str(key)] = {n: props.get(n) for n in names} | {"id": obj.id}
        return found

    def owners(self) -> dict[str, str]:
        owners: dict[str, str] = {}
        after: str | None = None
        while True:
            page = self._owners_page(after)
            for owner in page.results or []:
                if owner.email and not owner.archived:
                    owners[owner.email.strip().lower()] = str(owner.id)
            after = _next_after(page)
            if after is None:
                return owners

    def changed_since(
        self, cursor: str | None, properties: Sequence[str]
    ) -> Iterator[tuple[dict[str, Any], str]]:
        names = _names(properties, self.id_property)
        since = _millis(cursor) if cursor else None
        inclusive = False  # a restart asks for >= the last time seen and skips what it saw
        seen_at_last: set[str] = set()
        while True:
            progressed = False
            try:
                for record, modified_ms in self._query(since, inclusive, names):
                    if modified_ms == since and record["id"] in seen_at_last:
                        continue
                    if modified_ms != since:
                        since, seen_at_last = modified_ms, set()
                    seen_at_last.add(record["id"])
                    progressed = True
                    yield record, record["modified_at"]
                return
            except _Capped:
                if not progressed:
                    raise CrmError(
                        f"HubSpot search: more than {self.search_cap} contacts share one "
                        "modification time; cannot page past them",
                        permanent=True,
                    ) from None
            inclusive = True

    def properties(self) -> set[str]:
        answer = self._call(
            "properties", self._properties.get_all_with_http_info, "contacts", archived=False
        )
        return {p.name for p in answer.results or []}

    def probe(self) -> str:
        page = self._owners_page(None)
        count = len(page.results or [])
        owners = f"{count}+" if _next_after(page) else str(count)
        limit = self.usage.limit
        if "max" in limit:
            seconds = int(limit.get("interval_milliseconds", 10_000)) // 1000
            window = f"limit {limit['max']}/{seconds}s ({limit.get('remaining', '?')} left)"
        else:
            window = f"limit {self.calls_per_10s}/10s (client side)"
        return f"HubSpot reached at {self.base_url}: {owners} owners, {window}"

    # ---- upsert --------------------------------------------------------------------------

    def _upsert_batch(self, chunk: list[Record]) -> list[Outcome]:
        if not chunk:
            return []
        body = BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                SimplePublicObjectBatchInputUpsert(
                    id=r.key,
                    id_property=self.id_property,
                    properties={k: _text(v) for k, v in r.properties.items()},
                )
                for r in chunk
            ]
        )
        try:
            answer = self._call("batch upsert", self._batch.upsert_with_http_info, body)
        except CrmError as exc:
            if exc.status != 400:
                raise
            return self._isolate(chunk, exc)
        return self._outcomes(chunk, answer)

    def _isolate(self, chunk: list[Record], exc: CrmError) -> list[Outcome]:
        """The batch was rejected as a whole: find the record(s) HubSpot objects to."""
        details = exc.details if isinstance(exc, _Rejected) else []
        missing = {d.get("name") for d in details if d.get("error") == "PROPERTY_DOESNT_EXIST"}
        bad = [r for r in chunk if missing & r.properties.keys()]
        if bad:
            failed = [_failed(r, str(exc), True) for r in bad]
            return failed + self._upsert_batch([r for r in chunk if r not in bad])
        if not details and "duplicate" not in str(exc).lower():
            raise exc  # not about one input's values (e.g. the id property is not unique)
        if len(chunk) == 1:
            return [_failed(chunk[0], str(exc), True)]
        half = len(chunk) // 2
        return self._upsert_batch(chunk[:half]) + self._upsert_batch(chunk[half:])

    def _outcomes(self, chunk: list[Record], answer: Any) -> list[Outcome]:
        by_key = {r.key: r for r in chunk}
        done: dict[str, Outcome] = {}
        unkeyed = []
        for obj in answer.results or []:
            key = (obj.properties or {}).get(self.id_property)
            if key is None or str(key) not in by_key:
                unkeyed.append(obj)
                continue
            record = by_key[str(key)]
            done[record.key] = Outcome(
                record.lead_id, ok=True, crm_id=str(obj.id), created=bool(obj.new)
            )
        errors = list(getattr(answer, "errors", None) or [])
        loose: list[str] = []
        for error in errors:
            message = _readable(error.message or error.category or "HubSpot error")
            permanent = _permanent(error.category, error.message)
            keys = [
                str(v)
                for values in (error.context or {}).values()
                for v in values or []
                if str(v) in by_key
            ]
            for key in keys:
                done[key] = _failed(by_key[key], message, permanent)
            if not keys:
                loose.append(message)
        rest = [r for r in chunk if r.key not in done]
        if unkeyed and not errors and len(unkeyed) == len(rest):
            # results without the id property: HubSpot answers in input order
            for record, obj in zip(rest, unkeyed, strict=True):
                done[record.key] = Outcome(
                    record.lead_id, ok=True, crm_id=str(obj.id), created=bool(obj.new)
                )
            rest = []
        reason = "; ".join(loose) or "HubSpot returned no result for this record"
        return [done[r.key] for r in chunk if r.key in done] + [
            _failed(r, reason, False) for r in rest
        ]

    # ---- reads ---------------------------------------------------------------------------

    def _owners_page(self, after: str | None) -> Any:
        kwargs: dict[str, Any] = {"limit": self.owners_page, "archived": False}
        if after:
            kwargs["after"] = after
        return self._call("owners", self._owners.get_page_with_http_info, **kwargs)

    def _query(
        self, since: int | None, inclusive: bool, names: list[str]
    ) -> Iterator[tuple[dict[str, Any], int]]:
        """One search query (up to HubSpot's cap): records modified after ``since``, oldest
        first. Raises ``_Capped`` when the query reaches HubSpot's cap, so the caller
        restarts from the last record it saw."""
        filters: list[dict[str, Any]] = [
            {"propertyName": self.id_property, "operator": "HAS_PROPERTY"}
        ]
        if since is not None:
            op = "GTE" if inclusive else "GT"
            filters.append(
                {"propertyName": "lastmodifieddate", "operator": op, "value": str(since)}
            )
        after: str | None = None
        while True:
            request = PublicObjectSearchRequest(
                filter_groups=[{"filters": filters}],
                sorts=[{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                properties=[*names, "lastmodifieddate"],
                limit=self.search_limit,
                after=after,
            )
            try:
                page = self._call("search", self._search.do_search_with_http_info, request)
            except CrmError as exc:
                if after is None or exc.status != 400:
                    raise
                raise _Capped from None  # paged past the cap HubSpot enforces
            for obj in page.results or []:
                props = dict(obj.properties or {})
                modified = props.get("lastmodifieddate") or _iso(obj.updated_at)
                record = {n: props.get(n) for n in names}
                record |= {"id": str(obj.id), "modified_at": modified}
                yield record, _millis(modified)
            after = _next_after(page)
            if after is None:
                return
            if int(after) >= self.search_cap:
                raise _Capped

    # ---- the gate ------------------------------------------------------------------------

    def _pace(self, what: str) -> None:
        """Wait until one more call keeps within the limits (all calls; searches)."""
        windows = [self._calls, self._searches] if what == "search" else [self._calls]
        with self._lock:
            while (wait := max(w.wait(self._clock()) for w in windows)) > 0:
                self._sleep(wait)
                self.usage.waited_seconds += wait
            now = self._clock()
            for window in windows:
                window.sent.append(now)

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API request through the limiter; HubSpot's errors as ``CrmError``s."""
        waited = 0.0
        while True:
            self._pace(what)
            self.usage.calls += 1
            try:
                data, _status, headers = method(
                    *args, _request_timeout=self.timeout_seconds, **kwargs
                )
            except API_ERRORS as exc:
                self._note_limit(exc.headers)
                if exc.status != 429:
                    raise _error(what, exc) from None
                self.usage.throttled += 1
                delay = _seconds((exc.headers or {}).get("Retry-After"))
                if delay is None or waited + delay > self.max_wait_seconds:
                    raise RateLimited(
                        f"HubSpot rate limit reached on {what}: {_message(exc)}",
                        status=429,
                        retry_after=delay if delay is not None else self._interval(),
                    ) from None
                self._sleep(delay)
                waited += delay
                self.usage.waited_seconds += delay
                continue
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise CrmError(
                    f"HubSpot not reached at {self.base_url} ({what}): {type(exc).__name__}",
                    permanent=False,
                ) from None
            except ValueError as exc:  # an answer the library's models refuse
                raise CrmError(
                    f"HubSpot's answer to {what} could not be read: {masked(exc)}",
                    permanent=False,
                ) from None
            self._note_limit(headers)
            return data

    def _note_limit(self, headers: Any) -> None:
        for name, value in (headers or {}).items():
            lower = name.lower()
            if lower.startswith("x-hubspot-ratelimit-"):
                key = lower.removeprefix("x-hubspot-ratelimit-").replace("-", "_")
                self.usage.limit[key] = int(value) if str(value).isdigit() else value

    def _interval(self) -> float:
        return int(self.usage.limit.get("interval_milliseconds", 10_000)) / 1000


class _Window:
    """The calls sent in the last ``seconds``, at most ``limit`` of them."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit, self.seconds = limit, seconds
        self.sent: deque[float] = deque()

    def wait(self, now: float) -> float:
        """Seconds to wait before one more call (0: go now)."""
        while self.sent and self.sent[0] <= now - self.seconds:
            self.sent.popleft()
        if len(self.sent) < self.limit:
            return 0.0
        return self.sent[0] + self.seconds - now + 0.001  # a ms past the window's edge


class _Rejected(CrmError):
    """HubSpot's 400 for a request as a whole; ``details``: its per-property items."""

    def __init__(self, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(message, status=400, permanent=True)
        self.details = details


class _Capped(Exception):
    """A search query reached HubSpot's cap on results per query."""


def _error(what: str, exc: Any) -> CrmError:
    status = int(exc.status or 0)
    body = _body(exc)
    message = _message(exc)
    category = body.get("category") or ""
    if status == 401:
        error: CrmError = AuthError(
            f"HubSpot refused the access token ({category or 401}): it is wrong, revoked or "
            "expired; make a new one in the private app's settings",
            status=401,
            permanent=True,
        )
    elif status == 403:
        scopes = sorted(
            {
                scope
                for item in body.get("errors") or []
                for key in ("requiredGranularScopes", "requiredScopes", "missingScopes")
                for scope in (item.get("context") or {}).get(key) or []
            }
        )
        reason = f"the app lacks the scope {', '.join(scopes)}" if scopes else message
        error = AuthError(
            f"HubSpot refused {what} (403 {category}): {reason}", status=403, permanent=True
        )
    elif status >= 500 or status in (0, 408):
        error = CrmError(
            f"HubSpot failed {what} ({status}): {message}", status=status, permanent=False
        )
    elif status == 400:
        error = _Rejected(_readable(message), _details(str(body.get("message") or "")))
    else:
        error = CrmError(_readable(message), status=status, permanent=True)
    return error


def _body(exc: Any) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _message(exc: Any) -> str:
    body = _body(exc)
    return masked(body.get("message") or exc.reason or f"HTTP {exc.status}")


def _details(message: str) -> list[dict[str, Any]]:
    """The items of HubSpot's "Property values were not valid: [...]" message."""
    if not message.startswith(_INVALID):
        return []
    try:
        items = json.loads(message[len(_INVALID) :])
    except ValueError:
        return []
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _readable(message: str) -> str:
    """HubSpot's message, its JSON details turned into a sentence, addresses masked."""
    items = _details(message)
    if not items:
        return masked(message)
    parts = []
    for item in items:
        text = str(item.get("message") or item.get("error") or "invalid value")
        name, code = item.get("name"), item.get("error")
        if name and name not in text:
            text = f"{name}: {text}"
        parts.append(f"{text} ({code})" if code else text)
    return masked(f"{_INVALID} " + "; ".join(parts))


def _permanent(category: str | None, message: str | None) -> bool:
    codes = {str(i.get("error")) for i in _details(message or "")}
    return bool(({category or ""} | codes) & PERMANENT_CATEGORIES)


def _failed(record: Record, error: str, permanent: bool) -> Outcome:
    return Outcome(record.lead_id, ok=False, error=masked(error), permanent=permanent)


def _names(properties: Sequence[str], id_property: str) -> list[str]:
    return list(dict.fromkeys([*properties, id_property]))


def _next_after(page: Any) -> str | None:
    paging = getattr(page, "paging", None)
    nxt = getattr(paging, "next", None) if paging else None
    return str(nxt.after) if nxt and nxt.after else None


def _text(value: Any) -> str:
    if value is None:
        return ""  # HubSpot clears a property set to the empty string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _iso(value)
    return str(value)


def _iso(moment: datetime | None) -> str:
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _millis(value: str) -> int:
    text = str(value)
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _seconds(value: Any) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
