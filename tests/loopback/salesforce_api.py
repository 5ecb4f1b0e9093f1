"""A loopback Salesforce API for the Salesforce adapter's tests and the CRM sync benchmark.

A real HTTPS server on 127.0.0.1 (self-signed certificate made at start: ``api.ca_file``)
answering the documented request and response shapes of what ``leadflow/crm/salesforce.py``
calls through simple-salesforce: the OAuth 2.0 token endpoint (client-credentials and
username-password flows), ``limits``, the Lead describe, sObject Collections upserts by an
External ID field, SOQL ``query``/``queryMore`` paging, and Bulk API 2.0 ingest jobs. Every
REST answer carries ``Sforce-Limit-Info: api-usage=used/max``; past ``daily_max`` calls the
org answers 403 REQUEST_LIMIT_EXCEEDED. The SOQL parser takes only the query shapes the
adapter sends and answers MALFORMED_QUERY to anything else.

Test controls (thread-safe): ``fail_next``, ``expire_sessions``, ``add_user``, ``human_edit``,
``delete``, ``delay_seconds`` (every request waits that long before its answer); state to
assert on: ``leads`` (key -> fields), ``users``, ``calls`` ((method, path, records)),
``usage``, ``logins``.

    with SalesforceApi(client_id="cid", client_secret="secret", daily_max=15000) as api:
        adapter = SalesforceAdapter(login_url=api.url, ..., ca_file=api.ca_file)
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import ipaddress
import json
import re
import ssl
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

STATUSES = [
    "Open - Not Contacted",
    "Working - Contacted",
    "Nurturing",
    "Closed - Converted",
    "Closed - Not Converted",
]
# Lead fields: name -> (type, picklist values or None). External ID: Leadflow_Id__c.
LEAD_FIELDS: dict[str, tuple[str, list[str] | None]] = {
    "Id": ("id", None),
    "Leadflow_Id__c": ("string", None),
    "FirstName": ("string", None),
    "LastName": ("string", None),
    "Company": ("string", None),
    "Email": ("email", None),
    "Phone": ("phone", None),
    "Title": ("string", None),
    "Status": ("picklist", STATUSES),
    "Rating": ("picklist", ["Hot", "Warm", "Cold"]),
    "LeadSource": ("picklist", ["Web", "Phone Inquiry", "Partner Referral", "Other"]),
    "OwnerId": ("reference", None),
    "Country": ("string", None),
    "Industry": ("string", None),
    "NumberOfEmployees": ("int", None),
    "AnnualRevenue": ("currency", None),
    "Leadflow_Score__c": ("double", None),
    "Leadflow_Temperature__c": ("string", None),
    "Leadflow_Routing_Reason__c": ("string", None),
    "Leadflow_Status__c": ("string", None),
    "Leadflow_Recycle_Reason__c": ("string", None),
    "Leadflow_SLA_Breached__c": ("boolean", None),
    "CreatedDate": ("datetime", None),
    "LastModifiedDate": ("datetime", None),
}
RESTRICTED = {"Status"}  # restricted picklists: other values are refused
EXTERNAL_IDS = {"Leadflow_Id__c"}
READ_ONLY = {"Id", "CreatedDate", "LastModifiedDate"}
USER_FIELDS = {"Id", "Email", "IsActive", "Username"}
BATCH_MAX = 200
FAILURE_CODES = {
    401: "INVALID_SESSION_ID",
    403: "INSUFFICIENT_ACCESS",
    429: "TOO_MANY_REQUESTS",
    500: "UNKNOWN_EXCEPTION",
    503: "SERVER_UNAVAILABLE",
}
FAILURE_MESSAGES = {
    "INVALID_SESSION_ID": "Session expired or invalid",
    "INSUFFICIENT_ACCESS": "insufficient access rights on object id",
    "API_DISABLED_FOR_ORG": "The REST API is not enabled for this Organization.",
    "REQUEST_LIMIT_EXCEEDED": "TotalRequests Limit exceeded.",
    "SERVER_UNAVAILABLE": "Server temporarily unavailable",
}
INTEGRATION_USER = "integration@example.com"

_DATETIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)"
_SELECT = re.compile(
    r"SELECT (?P<fields>\w+(?:, ?\w+)*) FROM (?P<object>Lead|User)"
    r"(?: WHERE (?P<where>.+?))?(?: ORDER BY (?P<order>\w+(?:, ?\w+)*))?\Z"
)
_CONDITION = re.compile(
    r"(?P<in>\w+) IN \((?P<values>'(?:[^'\\]|\\.)*'(?:, ?'(?:[^'\\]|\\.)*')*)\)"
    r"|(?P<notnull>\w+) != null"
    rf"|(?P<after>\w+) > (?P<time>{_DATETIME})"
    r"|(?P<flag>\w+) = (?P<bool>true|false)"
)
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")


class ApiError(Exception):
    """An answer other than 2xx: status, Salesforce's error list, extra headers."""

    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.body, self.headers = (
            status,
            [{"message": message, "errorCode": code}],
            headers,
        )


def sf_time(moment: dt.datetime) -> str:
    """A datetime as Salesforce writes one: ``2024-05-01T10:00:00.000+0000``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class SalesforceApi:
    """The loopback org. Use as a context manager; ``url`` is both login and instance URL."""

    def __init__(
        self,
        client_id: str = "cid",
        client_secret: str = "secret",
        daily_max: int = 15000,
        username: str = "sync@example.com",
        password: str = "pw",
        page_size: int = 2000,
        delay_seconds: float = 0.0,
    ) -> None:
        self.client_id, self.client_secret = client_id, client_secret
        # Every request waits this long before it is answered (a slow org, or one far away);
        # settable while the org runs.
        self.delay_seconds = delay_seconds
        self.username, self.password = username, password
        self.daily_max, self.page_size = daily_max, page_size
        self.usage = 0
        self.logins = 0
        self.leads: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, int]] = []
        self.lock = threading.RLock()
        self._tokens: set[str] = set()
        self._failures: list[tuple[int, float | None, str]] = []
        self._cursors: dict[str, list[dict[str, Any]]] = {}
        self._jobs: dict[str, dict[str, Any]] = {}
        self._clock = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self._serial = 0
        self._version = "v60.0"
        self.add_user(INTEGRATION_USER)

    # -- life ------------------------------------------------------------------------------

    def __enter__(self) -> SalesforceApi:
        self._dir = tempfile.TemporaryDirectory(prefix="sf-loopback-")
        cert, key = _self_signed(Path(self._dir.name))
        self.ca_file = str(cert)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.api = self  # type: ignore[attr-defined]
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._dir.cleanup()

    # -- test controls ---------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: float | None = None,
        path_contains: str | None = None,
        code: str | None = None,
    ) -> None:
        """The next ``n`` requests (whose path holds ``path_contains``) answer ``status`` with
        Salesforce's error ``code`` (by default the usual one for the status)."""
        code = code or FAILURE_CODES.get(status, "UNKNOWN_EXCEPTION")
        with self.lock:
            self._failures += [(status, retry_after, path_contains or "", code)] * n

    def expire_sessions(self) -> None:
        with self.lock:
            self._tokens.clear()

    def add_user(self, email: str, active: bool = True) -> str:
        with self.lock:
            user_id = self._new_id("005")
            self.users[user_id] = {"Id": user_id, "Email": email, "IsActive": active}
            self.users[user_id]["Username"] = email
            return user_id

    def human_edit(self, key: str, **fields: Any) -> None:
        """A person edits a lead in Salesforce: new values, a later LastModifiedDate."""
        with self.lock:
            self.leads[key].update(fields, LastModifiedDate=sf_time(self._tick()))

    def delete(self, key: str) -> None:
        with self.lock:
            del self.leads[key]

    # -- helpers ---------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}{self._serial:012d}AAA"[:18]

    def _tick(self) -> dt.datetime:
        """The time of one change: never earlier, and one second past the last change."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self._clock = max(now, self._clock + dt.timedelta(seconds=1))
        return self._clock

    def _take_failure(self, path: str) -> tuple[int, float | None, str] | None:
        for i, (status, retry_after, part, code) in enumerate(self._failures):
            if part in path:
                del self._failures[i]
                return status, retry_after, code
        return None

    def limit_header(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.usage}/{self.daily_max}"}

    # -- OAuth -----------------------------------------------------------------------------

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type")
        if grant not in ("client_credentials", "password"):
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "grant type not supported",
            }
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return 400, {
                "error": "invalid_client",
                "error_description": "invalid client credentials",
            }
        if grant == "password" and (form.get("username"), form.get("password")) != (
            self.username,
            self.password,
        ):
            return 400, {"error": "invalid_grant", "error_description": "authentication failure"}
        token = uuid.uuid4().hex
        self._tokens.add(token)
        self.logins += 1
        return 200, {
            "access_token": token,
            "instance_url": self.url,
            "id": f"{self.url}/id/00D000000000001AAA/{next(iter(self.users))}",
            "token_type": "Bearer",
            "issued_at": str(int(dt.datetime.now(dt.UTC).timestamp() * 1000)),
            "signature": "bG9vcGJhY2s=",
        }

    # -- REST ------------------------------------------------------------------------------

    def rest(self, method: str, path: str, query: dict[str, str], body: bytes) -> Any:
        """One /services/data/vXX.X/... call, after the session and budget checks."""
        route = path.split("/", 4)[4].rstrip("/") if path.count("/") >= 4 else ""
        self._version = path.split("/")[3]
        if method == "GET" and route == "limits":
            left = max(0, self.daily_max - self.usage)
            return 200, {"DailyApiRequests": {"Max": self.daily_max, "Remaining": left}}
        if method == "GET" and route == "sobjects/Lead/describe":
            return 200, _describe()
        if method == "PATCH" and route.startswith("composite/sobjects/Lead/"):
            return 200, self.collection_upsert(route.rsplit("/", 1)[1], json.loads(body))
        if method == "GET" and route == "query":
            return 200, self.query(query.get("q", ""))
        if method == "GET" and route.startswith("query/"):
            return 200, self.query_more(route.split("/", 1)[1])
        if route.startswith("jobs/ingest"):
            return self.bulk(method, route, body)
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def collection_upsert(self, field: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        if field not in EXTERNAL_IDS:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field}",
            )
        records = payload.get("records") or []
        if len(records) > BATCH_MAX:
            raise ApiError(
                400,
                "EXCEEDED_ID_LIMIT",
                f"record limit reached. cannot submit more than {BATCH_MAX} records into this call",
            )
        if any((r.get("attributes") or {}).get("type") != "Lead" for r in records):
            raise ApiError(400, "INVALID_TYPE", "Each record needs attributes.type Lead")
        moment = sf_time(self._tick())
        results = [self._check(field, r) for r in records]
        if payload.get("allOrNone") and any(not r["success"] for r in results):
            return [r if not r["success"] else _rolled_back() for r in results]
        fresh = [{k: v for k, v in r.items() if k != "attributes"} for r in records]
        for i, (values, result) in enumerate(zip(fresh, results, strict=True)):
            if result["success"]:
                results[i] = self._write(field, values, moment)
        return results

    def _check(self, field: str, values: dict[str, Any]) -> dict[str, Any]:
        """The per-record checks of an upsert: {"success": True} or the record's errors."""
        key = values.get(field)
        if key in (None, ""):
            return _failed("MISSING_ARGUMENT", f"{field} not specified", [field])
        for name, value in values.items():
            if name == "attributes":
                continue
            if name not in LEAD_FIELDS or name in READ_ONLY:
                return _failed(
                    "INVALID_FIELD", f"No such column '{name}' on sobject of type Lead", []
                )
            picklist = LEAD_FIELDS[name][1]
            if name in RESTRICTED and picklist and value not in picklist:
                return _failed(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{name}: bad value for restricted picklist field: {value}",
                    [name],
                )
            if name == "OwnerId" and value not in self.users:
                return _failed(
                    "INVALID_CROSS_REFERENCE_KEY", "Owner ID: invalid cross reference id", [name]
                )
        if str(key) not in self.leads:
            missing = [f for f in ("LastName", "Company") if values.get(f) in (None, "")]
            if missing:
                return _failed(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    missing,
                )
        return {"success": True}

    def _write(self, field: str, values: dict[str, Any], moment: str) -> dict[str, Any]:
        key = str(values[field])
        lead = self.leads.get(key)
        created = lead is None
        if lead is None:
            lead = self.leads[key] = {"Id": self._new_id("00Q"), "CreatedDate": moment}
            lead["OwnerId"] = next(iter(self.users))
            lead["Status"] = STATUSES[0]
        lead.update(values, LastModifiedDate=moment)
        lead[field] = key
        return {"id": lead["Id"], "success": True, "errors": [], "created": created}

    # -- SOQL ------------------------------------------------------------------------------

    def query(self, soql: str) -> dict[str, Any]:
        found = _SELECT.match(soql.strip())
        if not found:
            raise ApiError(400, "MALFORMED_QUERY", f"unexpected query: {soql[:80]}")
        obj = found["object"]
        known = LEAD_FIELDS.keys() if obj == "Lead" else USER_FIELDS
        fields = [f.strip() for f in found["fields"].split(",")]
        order = [f.strip() for f in (found["order"] or "").split(",") if f.strip()]
        for name in fields + order:
            if name not in known:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{obj}'")
        rows = list((self.leads if obj == "Lead" else self.users).values())
        for test in _conditions(found["where"] or "", known):
            rows = [row for row in rows if test(row)]
        if order:
            rows.sort(key=lambda row: tuple(str(row.get(f) or "") for f in order))
        version = self._version
        records = [
            {
                "attributes": {
                    "type": obj,
                    "url": f"/services/data/{version}/sobjects/{obj}/{row['Id']}",
                }
            }
            | {f: row.get(f) for f in fields}
            for row in rows
        ]
        locator = uuid.uuid4().hex[:15]
        self._cursors[locator] = records
        return self._page(locator, 0)

    def query_more(self, locator_and_offset: str) -> dict[str, Any]:
        locator, _, offset = locator_and_offset.rpartition("-")
        if locator not in self._cursors or not offset.isdigit():
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(locator, int(offset))

    def _page(self, locator: str, offset: int) -> dict[str, Any]:
        records = self._cursors[locator]
        end = offset + self.page_size
        page = {
            "totalSize": len(records),
            "done": end >= len(records),
            "records": records[offset:end],
        }
        if end < len(records):
            page["nextRecordsUrl"] = f"/services/data/{self._version}/query/{locator}-{end}"
        else:
            self._cursors.pop(locator, None)
        return page

    # -- Bulk API 2.0 ingest ---------------------------------------------------------------

    def bulk(self, method: str, route: str, body: bytes) -> tuple[int, Any]:
        parts = route.split("/")  # jobs, ingest, [id], [batches | successfulResults/ ...]
        if method == "POST" and len(parts) == 2:
            spec = json.loads(body)
            if spec.get("object") != "Lead" or spec.get("operation") != "upsert":
                raise ApiError(400, "INVALIDJOB", "only Lead upsert jobs are served here")
            if spec.get("externalIdFieldName") not in EXTERNAL_IDS:
                raise ApiError(
                    400, "INVALIDJOB", "External ID was blank or not an External ID field"
                )
            job_id = self._new_id("750")
            self._jobs[job_id] = {
                "id": job_id, "operation": "upsert", "object": "Lead", "state": "Open",
                "externalIdFieldName": spec["externalIdFieldName"], "contentType": "CSV",
                "lineEnding": spec.get("lineEnding", "LF"), "columnDelimiter": "COMMA",
                "numberRecordsProcessed": 0, "numberRecordsFailed": 0, "apiVersion": 60.0,
                "contentUrl": f"services/data/{self._version}/jobs/ingest/{job_id}/batches",
                "_csv": "", "_done": [], "_failed": [],
            }  # fmt: skip
            return 200, _public(self._jobs[job_id])
        job = self._jobs.get(parts[2]) if len(parts) > 2 else None
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        tail = parts[3] if len(parts) > 3 else ""
        if method == "PUT" and tail == "batches":
            if job["state"] != "Open":
                raise ApiError(409, "INVALIDJOBSTATE", "the job is not open for data")
            job["_csv"] += body.decode("utf-8")
            return 201, None
        if method == "PATCH" and not tail:
            if json.loads(body).get("state") == "UploadComplete" and job["state"] == "Open":
                self._run_job(job)
            elif json.loads(body).get("state") == "Aborted":
                job["state"] = "Aborted"
            return 200, _public(job)
        if method == "GET" and not tail:
            return 200, _public(job)
        if method == "GET" and tail in ("successfulResults", "failedResults", "unprocessedRecords"):
            return 200, _results_csv(job, tail)
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def _run_job(self, job: dict[str, Any]) -> None:
        rows = list(csv.DictReader(io.StringIO(job["_csv"])))
        unknown = [c for c in (rows[0].keys() if rows else []) if c not in LEAD_FIELDS]
        if not rows or unknown:
            job["state"] = "Failed"
            job["errorMessage"] = (
                f"InvalidBatch : Field name not found : {unknown[0]}"
                if unknown
                else "InvalidBatch : no data"
            )
            return
        moment, field = sf_time(self._tick()), job["externalIdFieldName"]
        for row in rows:
            values = {k: _from_csv(k, v) for k, v in row.items() if v != ""}
            checked = self._check(field, values)
            if checked["success"]:
                result = self._write(field, values, moment)
                job["_done"].append(
                    {"sf__Id": result["id"], "sf__Created": str(result["created"]).lower()} | row
                )
            else:
                error = checked["errors"][0]
                fields = ",".join(error["fields"])
                message = f"{error['statusCode']}:{error['message']}:{fields} --"
                job["_failed"].append({"sf__Id": "", "sf__Error": message} | row)
        job.update(
            state="JobComplete",
            numberRecordsProcessed=len(rows),
            numberRecordsFailed=len(job["_failed"]),
        )


def _describe() -> dict[str, Any]:
    fields = []
    for name, (kind, picklist) in LEAD_FIELDS.items():
        fields.append({
            "name": name, "label": name.removesuffix("__c").replace("_", " "), "type": kind,
            "custom": name.endswith("__c"), "externalId": name in EXTERNAL_IDS,
            "unique": name in EXTERNAL_IDS, "nillable": name not in ("Id", "LastName", "Company"),
            "createable": name not in READ_ONLY, "updateable": name not in READ_ONLY,
            "restrictedPicklist": name in RESTRICTED,
            "picklistValues": [
                {"value": v, "label": v, "active": True, "defaultValue": i == 0}
                for i, v in enumerate(picklist or [])
            ],
        })  # fmt: skip
    return {"name": "Lead", "label": "Lead", "keyPrefix": "00Q", "fields": fields}


def _conditions(where: str, known: Any) -> list[Any]:
    """The WHERE clause as row tests: conditions joined by AND, each of one known shape."""
    tests, pos = [], 0
    while pos < len(where):
        found = _CONDITION.match(where, pos)
        if not found:
            raise ApiError(
                400, "MALFORMED_QUERY", f"unexpected condition at: {where[pos : pos + 40]}"
            )
        name = found["in"] or found["notnull"] or found["after"] or found["flag"]
        if name not in known:
            raise ApiError(400, "INVALID_FIELD", f"No such column '{name}'")
        if found["in"]:
            wanted = {re.sub(r"\\(.)", r"\1", v) for v in _QUOTED.findall(found["values"])}
            tests.append(
                lambda row, n=name, w=wanted: str(row.get(n)) in w and row.get(n) is not None
            )
        elif found["notnull"]:
            tests.append(lambda row, n=name: row.get(n) not in (None, ""))
        elif found["after"]:
            since = dt.datetime.fromisoformat(found["time"].replace("Z", "+00:00"))
            tests.append(lambda row, n=name, s=since: dt.datetime.fromisoformat(row[n]) > s)
        else:
            flag = found["bool"] == "true"
            tests.append(lambda row, n=name, f=flag: bool(row.get(n)) is f)
        pos = found.end()
        if where.startswith(" AND ", pos):
            pos += 5
        elif pos < len(where):
            raise ApiError(400, "MALFORMED_QUERY", f"unexpected text at: {where[pos : pos + 40]}")
    return tests


def _failed(code: str, message: str, fields: list[str]) -> dict[str, Any]:
    return {
        "success": False,
        "errors": [{"statusCode": code, "message": message, "fields": fields}],
    }


def _rolled_back() -> dict[str, Any]:
    message = "Record rolled back because not all records were valid and the request was using AllOrNone header"
    return _failed("ALL_OR_NONE_OPERATION_ROLLED_BACK", message, [])


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _from_csv(name: str, value: str) -> Any:
    kind = LEAD_FIELDS.get(name, ("string", None))[0]
    if value == "#N/A":
        return None
    if kind == "boolean":
        return value.lower() == "true"
    if kind in ("int", "double", "currency"):
        try:
            return int(value) if kind == "int" else float(value)
        except ValueError:
            return value
    return value


def _results_csv(job: dict[str, Any], kind: str) -> str:
    rows = {"successfulResults": job["_done"], "failedResults": job["_failed"]}.get(kind, [])
    lead = ["sf__Id", "sf__Created"] if kind == "successfulResults" else ["sf__Id", "sf__Error"]
    columns = list(csv.DictReader(io.StringIO(job["_csv"])).fieldnames or [])
    if kind == "unprocessedRecords":
        lead = []
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=lead + columns, quoting=csv.QUOTE_ALL, lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Salesforce
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read api.calls

    def _dispatch(self) -> None:
        self._serve(self.command)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch

    def _serve(self, method: str) -> None:
        api: SalesforceApi = self.server.api  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if api.delay_seconds > 0:
            time.sleep(api.delay_seconds)  # outside the lock: other requests are not held up
        with api.lock:
            api.calls.append((method, parts.path, _count(parts.path, body)))
            try:
                status, answer, headers = self._answer(api, method, parts.path, query, body)
            except ApiError as exc:
                status, answer, headers = exc.status, exc.body, exc.headers
                if parts.path.startswith("/services/data/"):
                    headers = api.limit_header() | headers
            except (ValueError, KeyError, TypeError) as exc:
                status, answer, headers = (
                    400,
                    [{"message": str(exc), "errorCode": "JSON_PARSER_ERROR"}],
                    {},
                )
        self._reply(status, answer, headers)

    def _answer(
        self, api: SalesforceApi, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        failure = api._take_failure(path)
        if failure:
            status, retry_after, code = failure
            extra = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            raise ApiError(status, code, FAILURE_MESSAGES.get(code, code.lower()), **extra)
        if path == "/services/oauth2/token" and method == "POST":
            status, answer = api.token({k: v[0] for k, v in parse_qs(body.decode()).items()})
            return status, answer, {}
        if not path.startswith("/services/data/"):
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in api._tokens:
            raise ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")
        api.usage += 1
        if api.usage > api.daily_max:
            raise ApiError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        status, answer = api.rest(method, path, query, body)
        return status, answer, api.limit_header()

    def _reply(self, status: int, answer: Any, headers: dict[str, str]) -> None:
        if isinstance(answer, str):
            data, kind = answer.encode(), "text/csv"
        elif answer is None:
            data, kind = b"", "application/json;charset=UTF-8"
        else:
            data, kind = json.dumps(answer).encode(), "application/json;charset=UTF-8"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _count(path: str, body: bytes) -> int:
    """How many records a request carries: a collection's records, a CSV upload's rows."""
    if "/composite/sobjects/" in path and body:
        try:
            return len(json.loads(body).get("records") or [])
        except (ValueError, AttributeError):
            return 0
    if path.endswith("/batches") and body:
        return max(0, len(list(csv.reader(io.StringIO(body.decode("utf-8"))))) - 1)
    return 0


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
