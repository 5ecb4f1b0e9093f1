"""The Salesforce adapter of the two-way CRM sync: leads as Salesforce ``Lead`` records.

Every call goes through ``simple-salesforce`` (sObject Collections upserts by an External ID
field, Bulk API 2.0 ingest jobs for big batches, SOQL with ``nextRecordsUrl`` paging, the Lead
describe, ``limits``). Logging in is the OAuth 2.0 token request Salesforce documents
(client-credentials flow, or the username-password flow when a username is given), made here
with ``requests``; its access token and instance URL then build the library's client.

All HTTP goes through one ``requests`` session that counts the calls, reads the daily budget
from the ``Sforce-Limit-Info`` header (``api-usage=used/max``, parsed by the library),
waits out short ``Retry-After``s and stops before the call that would dip into the reserve
(``daily_reserve``), so a sync never spends the share of the org's API budget other
integrations need. The library's exceptions become ``CrmError``/``AuthError``/``RateLimited``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceOperationError,
)

from leadflow.crm.base import AuthError, CrmError, Outcome, RateLimited, Record, Usage
from leadflow.quarantine import masked

T = TypeVar("T")

# Per-record status codes that can succeed when the same values are sent again; every other
# code is about the values (bad field, picklist value, reference, required field): permanent.
TEMPORARY_CODES = frozenset(
    {"UNABLE_TO_LOCK_ROW", "REQUEST_RUNNING_TOO_LONG", "SERVER_UNAVAILABLE"}
)
DAILY_LIMIT_RETRY = 3600.0  # the daily budget is a rolling 24 h window: look again in an hour
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_MAX_IN_CHARS = 3000  # one SOQL IN (...) list: keeps the GET query string short


class _Session(requests.Session):
    """The one session every request goes through (token, REST, Bulk 2.0)."""

    def __init__(self, adapter: SalesforceAdapter) -> None:
        super().__init__()
        self._adapter = adapter

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._adapter.timeout_seconds)
        if self._adapter.ca_file:  # per request: REQUESTS_CA_BUNDLE would beat session.verify
            kwargs.setdefault("verify", self._adapter.ca_file)
        parent = super().request
        return self._adapter._send(lambda: parent(method, url, *args, **kwargs), str(url))


class SalesforceAdapter:
    """Leads in Salesforce, keyed by an External ID field (``id_field``) on Lead."""

    name = "salesforce"
    batch_size = 200  # sObject Collections take at most 200 records a call

    def __init__(
        self,
        *,
        login_url: str = "https://login.salesforce.com",
        client_id: str | None,
        client_secret: str | None,
        username: str | None = None,
        password: str | None = None,
        api_version: str = "60.0",
        id_field: str = "Leadflow_Id__c",
        bulk_threshold: int = 2000,
        daily_reserve: float = 0.1,
        ca_file: str | None = None,
        timeout_seconds: float = 30.0,
        max_wait_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        bulk_poll_seconds: float = 2.0,
    ) -> None:
        if not _NAME.match(id_field):
            raise ValueError(f"not a Salesforce field name: {id_field!r}")
        self.login_url = login_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self.api_version = api_version
        self.id_field = id_field
        self.bulk_threshold = bulk_threshold
        self.daily_reserve = daily_reserve
        self.timeout_seconds = timeout_seconds
        self.max_wait_seconds = max_wait_seconds
        self.bulk_poll_seconds = bulk_poll_seconds
        self.usage = Usage()
        self._sleep = sleep
        self.ca_file = ca_file
        self._session = _Session(self)
        if ca_file:
            self._session.verify = ca_file
        self._sf: Salesforce | None = None

    # -- the protocol ------------------------------------------------------------------------

    def upsert(self, records: Sequence[Record]) -> list[Outcome]:
        if not records:
            return []
        if len(records) > self.bulk_threshold:
            return self._bulk_upsert(records)
        outcomes: list[Outcome] = []
        for start in range(0, len(records), self.batch_size):
            outcomes += self._collection_upsert(records[start : start + self.batch_size])
        return outcomes

    def read(self, keys: Sequence[str], properties: Sequence[str]) -> dict[str, dict[str, Any]]:
        fields = self._fields(properties)
        found: dict[str, dict[str, Any]] = {}
        for in_list in self._in_lists(keys):
            soql = f"SELECT {', '.join(fields)} FROM Lead WHERE {self.id_field} IN ({in_list})"
            for row in self._query(soql):
                found[str(row[self.id_field])] = self._values(row, fields)
        return found

    def owners(self) -> dict[str, str]:
        rows = self._query("SELECT Id, Email FROM User WHERE IsActive = true")
        return {str(row["Email"]).lower(): row["Id"] for row in rows if row.get("Email")}

    def changed_since(
        self, cursor: str | None, properties: Sequence[str]
    ) -> Iterator[tuple[dict[str, Any], str]]:
        fields = self._fields([*properties, "LastModifiedDate"])
        where = f"{self.id_field} != null"
        if cursor:
            where += f" AND LastModifiedDate > {_soql_datetime(cursor)}"
        soql = f"SELECT {', '.join(fields)} FROM Lead WHERE {where} ORDER BY LastModifiedDate, Id"
        for row in self._query(soql):
            record = self._values(row, fields)
            modified = _iso(str(record.pop("LastModifiedDate")))
            record["modified_at"] = modified
            yield record, modified

    def properties(self) -> set[str]:
        described = self._call(lambda sf: sf.Lead.describe())
        return {field["name"] for field in described["fields"]}

    def probe(self) -> str:
        limits = self._call(lambda sf: sf.limits())
        daily = limits.get("DailyApiRequests") or {}
        assert self._sf is not None
        return (
            f"Salesforce reached at {self._sf.sf_instance}: {int(daily.get('Remaining', 0)):,} "
            f"of {int(daily.get('Max', 0)):,} daily API calls left"
        )

    # -- upserts -----------------------------------------------------------------------------

    def _collection_upsert(self, batch: Sequence[Record]) -> list[Outcome]:
        body = json.dumps(
            {"allOrNone": False, "records": [self._sobject(r) for r in batch]}, default=str
        )
        path = f"composite/sobjects/Lead/{self.id_field}"
        self.usage.records += len(batch)
        results = self._call(lambda sf: sf.restful(path, method="PATCH", data=body))
        if not isinstance(results, list) or len(results) != len(batch):
            raise CrmError("Salesforce answered an upsert with no result per record")
        return [_outcome(record, result) for record, result in zip(batch, results, strict=True)]

    def _sobject(self, record: Record) -> dict[str, Any]:
        return {"attributes": {"type": "Lead"}, **record.properties, self.id_field: record.key}

    def _bulk_upsert(self, records: Sequence[Record]) -> list[Outcome]:
        rows = [
            {**{k: _csv_value(v) for k, v in r.properties.items()}, self.id_field: r.key}
            for r in records
        ]
        self.usage.records += len(records)

        def run(sf: Salesforce) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
            lead = sf.bulk2.Lead
            jobs = lead.upsert(
                records=rows, external_id_field=self.id_field, wait=self.bulk_poll_seconds
            )
            done: list[dict[str, str]] = []
            failed: list[dict[str, str]] = []
            for job in jobs:
                done += csv.DictReader(io.StringIO(lead.get_successful_records(job["job_id"])))
                failed += csv.DictReader(io.StringIO(lead.get_failed_records(job["job_id"])))
            return done, failed

        done, failed = self._call(run)
        return self._bulk_outcomes(records, done, failed)

    def _bulk_outcomes(
        self,
        records: Sequence[Record],
        done: list[dict[str, str]],
        failed: list[dict[str, str]],
    ) -> list[Outcome]:
        waiting: dict[str, list[Record]] = defaultdict(list)
        for record in records:
            waiting[record.key].append(record)
        outcomes = []
        for row in done:
            if waiting.get(row.get(self.id_field, "")):
                record = waiting[row[self.id_field]].pop(0)
                created = row.get("sf__Created", "").lower() == "true"
                outcomes.append(Outcome(record.lead_id, True, row.get("sf__Id"), created))
        for row in failed:
            if waiting.get(row.get(self.id_field, "")):
                record = waiting[row[self.id_field]].pop(0)
                code, message = _bulk_error(row.get("sf__Error", ""))
                outcomes.append(
                    Outcome(
                        record.lead_id,
                        False,
                        error=masked(f"{code}: {message}"),
                        permanent=code not in TEMPORARY_CODES,
                    )
                )
        for left in waiting.values():
            outcomes += [
                Outcome(r.lead_id, False, error="not processed by the Salesforce bulk job")
                for r in left
            ]
        return outcomes

    # -- queries -----------------------------------------------------------------------------

    def _fields(self, properties: Sequence[str]) -> list[str]:
        fields = list(dict.fromkeys(["Id", self.id_field, *properties]))
        bad = [f for f in fields if not _NAME.match(f)]
        if bad:
            raise CrmError(f"not Salesforce field names: {bad}", permanent=True)
        return fields

    def _values(self, row: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        values = {f: row.get(f) for f in fields if f != "Id"}
        values["id"] = row["Id"]
        return values

    def _in_lists(self, keys: Sequence[str]) -> Iterator[str]:
        chunk: list[str] = []
        size = 0
        for key in dict.fromkeys(str(k) for k in keys):
            quoted = "'" + key.replace("\\", "\\\\").replace("'", "\\'") + "'"
            if chunk and size + len(quoted) > _MAX_IN_CHARS:
                yield ", ".join(chunk)
                chunk, size = [], 0
            chunk.append(quoted)
            size += len(quoted) + 2
        if chunk:
            yield ", ".join(chunk)

    def _query(self, soql: str) -> Iterator[dict[str, Any]]:
        page = self._call(lambda sf: sf.query(soql))
        while True:
            yield from page["records"]
            next_url = page.get("nextRecordsUrl")
            if page.get("done", True) or not next_url:
                return
            page = self._call(lambda sf, url=next_url: sf.query_more(url, identifier_is_url=True))

    # -- sessions, limits, errors --------------------------------------------------------------

    def _call(self, do: Callable[[Salesforce], T]) -> T:
        """One library call; an expired session logs in again once and the call is retried."""
        for attempt in (1, 2):
            sf = self._sf or self._login()
            try:
                return do(sf)
            except SalesforceExpiredSession as exc:
                if attempt == 2:
                    raise self._error(exc) from exc
                self._sf = None
            except SalesforceError as exc:
                raise self._error(exc) from exc
            except SalesforceOperationError as exc:
                text = masked(f"Salesforce bulk job failed: {exc}")
                raise CrmError(text, permanent="InvalidBatch" in text) from exc
        raise AssertionError("unreachable")

    def _login(self) -> Salesforce:
        data = {"client_id": self.client_id or "", "client_secret": self.client_secret or ""}
        if self.username:
            data |= {
                "grant_type": "password",
                "username": self.username,
                "password": self.password or "",
            }
        else:
            data["grant_type"] = "client_credentials"
        answer = self._session.post(f"{self.login_url}/services/oauth2/token", data=data)
        try:
            body = answer.json()
        except ValueError:
            body = {}
        if answer.status_code != 200 or "access_token" not in body:
            said = body.get("error_description") or body.get("error") or answer.text[:200]
            text = masked(f"Salesforce login refused ({answer.status_code}): {said}")
            if answer.status_code in (400, 401, 403):
                raise AuthError(text, status=answer.status_code)
            raise CrmError(text, status=answer.status_code, permanent=False)
        self._sf = Salesforce(
            instance_url=body["instance_url"],
            session_id=body["access_token"],
            version=self.api_version,
            session=self._session,
        )
        return self._sf

    def _send(self, do: Callable[[], requests.Response], url: str) -> requests.Response:
        """Every HTTP request: the budget check, the count, the limit header, Retry-After."""
        waited = 0.0
        while True:
            if "/services/oauth2/" not in url:
                self._check_budget()
            self.usage.calls += 1
            try:
                answer = do()
            except requests.RequestException as exc:
                raise CrmError(f"Salesforce unreachable: {type(exc).__name__}") from exc
            self._note_limit(answer)
            if answer.status_code not in (429, 503):
                return answer
            if answer.status_code == 429:
                self.usage.throttled += 1
            wait = _retry_after(answer.headers.get("Retry-After"))
            if wait is not None and waited + wait <= self.max_wait_seconds:
                self._sleep(wait)
                waited += wait
                self.usage.waited_seconds += wait
                continue
            if answer.status_code == 429 or wait is not None:
                raise RateLimited(
                    f"Salesforce answered {answer.status_code}, come back in {wait or 60:g} s",
                    status=answer.status_code,
                    retry_after=wait,
                )
            return answer  # 503 without Retry-After: the library raises, a temporary error

    def _note_limit(self, answer: requests.Response) -> None:
        header = answer.headers.get("Sforce-Limit-Info")
        usage = Salesforce.parse_api_usage(header).get("api-usage") if header else None
        if usage is not None:
            self.usage.limit = {"api_usage": usage.used, "api_max": usage.total}

    def _check_budget(self) -> None:
        used, most = self.usage.limit.get("api_usage"), self.usage.limit.get("api_max")
        if used is None or not most:
            return
        if most - used - 1 < self.daily_reserve * most:
            raise RateLimited(
                f"Salesforce daily API budget: {used:,} of {most:,} calls used, the last "
                f"{self.daily_reserve:.0%} are kept for others",
                retry_after=DAILY_LIMIT_RETRY,
            )

    def _error(self, exc: SalesforceError) -> CrmError:
        status = exc.status
        code, message = _said(exc.content)
        text = masked(f"Salesforce {status}: {code}: {message}" if code else f"{status}: {message}")
        if status == 401:
            return AuthError(text, status=status)
        if status == 403 and code == "REQUEST_LIMIT_EXCEEDED":
            self.usage.throttled += 1
            return RateLimited(text, status=status, retry_after=DAILY_LIMIT_RETRY)
        if status == 403:
            return AuthError(text, status=status)
        if status == 429:
            return RateLimited(text, status=status)
        return CrmError(text, status=status, permanent=status < 500)


def _outcome(record: Record, result: dict[str, Any]) -> Outcome:
    if result.get("success"):
        return Outcome(record.lead_id, True, result.get("id"), bool(result.get("created")))
    errors = result.get("errors") or [{"statusCode": "UNKNOWN", "message": "no reason given"}]
    parts = []
    for error in errors:
        fields = error.get("fields") or []
        where = f" ({', '.join(fields)})" if fields else ""
        parts.append(f"{error.get('statusCode')}: {error.get('message')}{where}")
    return Outcome(
        record.lead_id,
        False,
        error=masked("; ".join(parts)),
        permanent=not any(e.get("statusCode") in TEMPORARY_CODES for e in errors),
    )


def _bulk_error(text: str) -> tuple[str, str]:
    """A Bulk API ``sf__Error``, ``CODE:message:Field1,Field2 --``, as (code, message)."""
    code, _, rest = text.partition(":")
    if rest.rstrip().endswith("--"):
        message, colon, fields = rest.rstrip().removesuffix("--").rstrip().rpartition(":")
        if colon and re.fullmatch(r"[\w, ]*", fields):
            rest = f"{message} ({fields})" if fields.strip() else message
    return code, rest


def _said(content: Any) -> tuple[str, str]:
    """(errorCode, message) of a Salesforce error body (a list of errors, or one)."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        content = content[0]
    if isinstance(content, dict):
        code = content.get("errorCode") or content.get("error") or ""
        return str(code), str(content.get("message") or content.get("error_description") or "")
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return "", str(content)[:300]


def _csv_value(value: Any) -> str:
    if value is None:
        return "#N/A"  # Bulk API 2.0 sets a field to null with #N/A
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _retry_after(header: str | None) -> float | None:
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _soql_datetime(cursor: str) -> str:
    """An ISO-8601 time as a SOQL datetime literal (UTC, whole seconds)."""
    try:
        moment = datetime.fromisoformat(cursor.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CrmError(f"not an ISO-8601 time: {cursor!r}", permanent=True) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(salesforce_time: str) -> str:
    """Salesforce's ``2024-05-01T10:00:00.000+0000`` as ISO-8601 in UTC."""
    return datetime.fromisoformat(salesforce_time).astimezone(UTC).isoformat()
