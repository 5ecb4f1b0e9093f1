"""A HubSpot CRM v3 API on loopback, for the adapter's tests and the CRM sync benchmark.

``HubSpotApi`` is a real HTTP server (127.0.0.1, a free port, a daemon thread) that answers
the contacts batch upsert/read, contacts search, owners and contact properties endpoints
with the request and response shapes of HubSpot's documentation, as ``hubspot-api-client``
sends and parses them: Bearer auth (401 INVALID_AUTHENTICATION), scopes (403
MISSING_SCOPES), a rolling ten-second limit (429 RATE_LIMIT with the
X-HubSpot-RateLimit-* headers on every answer), batches of at most 100 inputs, a unique id
property, whole-batch 400s for unknown properties, per-input errors in a 207 Multi-Status
for an owner id that is no owner, and search's 10,000-result cap.

Test controls are plain, thread-safe methods and attributes: ``fail_next``, ``limit``,
``scopes``, ``token``, ``add_owner``, ``human_edit``, ``delete``, ``add_property``,
``contacts`` (key -> properties), ``calls`` ((method, path, n_inputs), one per request)
and ``call_times`` (the server clock at each request, same order).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CONTACTS = "/crm/v3/objects/contacts"
SCOPES = {
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.owners.read",
}
STANDARD = ["email", "firstname", "lastname", "phone", "company", "jobtitle", "website"]
STANDARD += ["country", "city", "industry", "lifecyclestage", "hs_lead_status", "hubspot_owner_id"]
READ_ONLY = ["hs_object_id", "createdate", "lastmodifieddate"]
DATES = {"createdate", "lastmodifieddate"}
WINDOW = 10.0
# (method, path) -> (the scope it needs, the method answering it)
ROUTES = {
    ("POST", f"{CONTACTS}/batch/upsert"): ("crm.objects.contacts.write", "upsert"),
    ("POST", f"{CONTACTS}/batch/read"): ("crm.objects.contacts.read", "read"),
    ("POST", f"{CONTACTS}/search"): ("crm.objects.contacts.read", "search"),
    ("GET", "/crm/v3/owners"): ("crm.objects.owners.read", "owners"),
    ("GET", "/crm/v3/properties/contacts"): ("crm.objects.contacts.read", "properties"),
}
Query = dict[str, list[str]]


class Reply(Exception):
    """An error answer: raised by a route, sent by the handler."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def _error(status: int, category: str, message: str, **extra: Any) -> Reply:
    body = {"status": "error", "message": message, "correlationId": "00000000-loopback"}
    return Reply(status, {**body, "category": category, **extra})


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _ms(value: Any) -> int:
    text = str(value)
    if text.lstrip("-").isdigit():
        return int(text)
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _batch_error(category: str, message: str, context: dict[str, list[str]]) -> dict[str, Any]:
    """One entry of a 207 answer's ``errors`` (HubSpot's StandardError)."""
    body = {"status": "error", "category": category, "message": message}
    return body | {"context": context, "errors": [], "links": {}}


def _detail(name: str, code: str, message: str) -> dict[str, Any]:
    """One item of HubSpot's "Property values were not valid" list."""
    return {"isValid": False, "message": message, "error": code, "name": name}


def _invalid(items: list[dict[str, Any]]) -> str:
    return "Property values were not valid: " + json.dumps(items)


class HubSpotApi:
    """The loopback HubSpot: ``with HubSpotApi(token="pat-test") as api: api.url``."""

    def __init__(
        self,
        token: str = "pat-test",
        calls_per_10s: int = 100,
        *,
        id_property: str = "leadflow_id",
        clock: Callable[[], float] = time.monotonic,
        daily_limit: int = 250_000,
    ) -> None:
        self.token = token
        self.calls_per_10s = calls_per_10s
        self.id_property = id_property
        self.clock = clock
        self.daily_limit = daily_limit
        self.scopes: set[str] = set(SCOPES)
        self.batch_limit = 100
        self.search_cap = 10_000
        self.contacts: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, int]] = []
        self.call_times: list[float] = []
        self.throttled = 0
        self._owners: list[dict[str, Any]] = []
        self._properties: dict[str, dict[str, Any]] = {}
        self._failures: list[tuple[int, str | None, float | None]] = []
        self._window: deque[float] = deque()
        self._daily = 0
        self._next_id = 1001
        self._last_ms = 0
        self._lock = threading.RLock()
        for name in STANDARD + READ_ONLY:
            self.add_property(name, hubspot_defined=True)
        self.add_property(id_property, unique=True)
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> HubSpotApi:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        serve = self._server.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server, "use HubSpotApi as a context manager"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ---- test controls -----------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 500,
        path_contains: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """The next ``n`` requests (whose path contains ``path_contains``) get ``status``:
        a 429 carries HubSpot's rate-limit body (and ``Retry-After`` when given)."""
        with self._lock:
            self._failures += [(status, path_contains, retry_after)] * n

    def limit(self, calls_per_10s: int) -> None:
        with self._lock:
            self.calls_per_10s = calls_per_10s

    def add_property(self, name: str, *, unique: bool = False, hubspot_defined: bool = False):
        with self._lock:
            date = name in DATES
            self._properties[name] = dict(
                name=name, label=name.replace("_", " ").title(), description="", options=[],
                type="datetime" if date else "string", fieldType="date" if date else "text",
                groupName="contactinformation", hasUniqueValue=unique, formField=False,
                hubspotDefined=hubspot_defined, hidden=False,
                modificationMetadata=dict(
                    archivable=not hubspot_defined, readOnlyDefinition=hubspot_defined,
                    readOnlyValue=name in READ_ONLY,
                ),
            )  # fmt: skip

    def add_owner(self, email: str, first: str = "", last: str = "") -> str:
        with self._lock:
            owner_id = str(70_000_000 + len(self._owners) + 1)
            stamp = _iso(self._stamp())
            self._owners.append(
                dict(
                    id=owner_id, email=email, firstName=first, lastName=last, type="PERSON",
                    userId=9_000 + len(self._owners), createdAt=stamp, updatedAt=stamp,
                    archived=False, teams=[],
                )
            )  # fmt: skip
            return owner_id

    def human_edit(self, key: str, **properties: Any) -> dict[str, Any]:
        """A person changes (or creates) the record ``key`` in HubSpot."""
        with self._lock:
            record, _ = self._write(key, {k: str(v) for k, v in properties.items()})
            return record

    def delete(self, key: str) -> None:
        with self._lock:
            del self.contacts[key]

    # ---- the store -----------------------------------------------------------------------

    def _stamp(self) -> int:
        """Milliseconds since the epoch, strictly increasing."""
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        return self._last_ms

    def _write(self, key: str, properties: dict[str, str]) -> tuple[dict[str, Any], bool]:
        now = self._stamp()
        record = self.contacts.get(key)
        new = record is None
        if record is None:
            record = {"hs_object_id": str(self._next_id), "createdate": _iso(now)}
            record[self.id_property] = key
            self._next_id += 1
            self.contacts[key] = record
        for name, value in properties.items():
            record[name] = value if value != "" else None
        record["lastmodifieddate"] = _iso(now)
        return record, new

    def _public(self, record: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
        wanted = names or ["email", "firstname", "lastname"]
        props = {n: record.get(n) for n in [*wanted, *READ_ONLY]}
        return {
            "id": record["hs_object_id"],
            "properties": props,
            "createdAt": record["createdate"],
            "updatedAt": record["lastmodifieddate"],
            "archived": False,
        }

    # ---- the gate every request passes ---------------------------------------------------

    def _admit(
        self, method: str, path: str, n_inputs: int, scope: str, authorization: str
    ) -> dict[str, str]:
        """Log the call; raise the answer for an injected failure, a wrong token, the
        rate limit or a missing scope; return the rate-limit headers."""
        with self._lock:
            now = self.clock()
            self.calls.append((method, path, n_inputs))
            self.call_times.append(now)
            while self._window and self._window[0] <= now - WINDOW:
                self._window.popleft()
            headers = self._limit_headers()
            for i, (status, part, retry_after) in enumerate(self._failures):
                if part is None or part in path:
                    del self._failures[i]
                    extra = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
                    raise (
                        self._throttle(headers | extra)
                        if status == 429
                        else _error(status, "INTERNAL_ERROR", "internal error (injected)")
                    )
            if authorization != f"Bearer {self.token}":
                raise _error(
                    401,
                    "INVALID_AUTHENTICATION",
                    "Authentication credentials not found. This API supports OAuth 2.0 "
                    "authentication and you can find more details at "
                    "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                )
            if len(self._window) >= self.calls_per_10s:
                wait = self._window[0] + WINDOW - now
                raise self._throttle(headers | {"Retry-After": str(max(1, math.ceil(wait)))})
            self._window.append(now)
            self._daily += 1
            headers = self._limit_headers()
            if scope not in self.scopes:
                raise _error(
                    403,
                    "MISSING_SCOPES",
                    "This app hasn't been granted all required scopes to make this call. "
                    "Read more about required scopes here: https://developers.hubspot.com/scopes.",
                    errors=[
                        {
                            "message": "One or more of the following scopes are required.",
                            "context": {"requiredGranularScopes": [scope]},
                        }
                    ],
                    links={"scopes": "https://developers.hubspot.com/scopes"},
                )
            return headers

    def _limit_headers(self) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Max": str(self.calls_per_10s),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.calls_per_10s - len(self._window))),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(WINDOW * 1000)),
            "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self._daily)),
        }

    def _throttle(self, headers: dict[str, str]) -> Reply:
        self.throttled += 1
        reply = _error(
            429,
            "RATE_LIMITS",
            "You have reached your ten_secondly_rolling limit.",
            errorType="RATE_LIMIT",
            policyName="TEN_SECONDLY_ROLLING",
            groupName="loopback",
        )
        reply.headers = headers
        return reply

    # ---- routes --------------------------------------------------------------------------

    def _inputs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        inputs = body.get("inputs") or []
        if len(inputs) > self.batch_limit:
            raise _error(
                400,
                "VALIDATION_ERROR",
                f"Batch input size of {len(inputs)} exceeds the maximum of {self.batch_limit}",
            )
        return inputs

    def upsert(self, body: dict[str, Any], _query: Query) -> tuple[int, dict[str, Any]]:
        started = _iso(self._stamp())
        inputs = self._inputs(body)
        names = {n for i in inputs for n in i.get("properties") or {}}
        invalid = [
            _detail(n, "PROPERTY_DOESNT_EXIST", f'Property "{n}" does not exist')
            for n in sorted(names - self._properties.keys())
        ]
        emails = [str((i.get("properties") or {}).get("email") or "") for i in inputs]
        invalid += [
            _detail("email", "INVALID_EMAIL", f"Email address {e} is invalid")
            for e in emails
            if e and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", e)
        ]
        if invalid:  # HubSpot rejects the whole batch
            raise _error(400, "VALIDATION_ERROR", _invalid(invalid))
        for item in inputs:
            prop = item.get("idProperty")
            if not prop or not self._properties.get(prop, {}).get("hasUniqueValue"):
                raise _error(
                    400, "VALIDATION_ERROR", f"Unable to perform update/upsert by non-unique {prop}"
                )
        keys = [str(i["id"]) for i in inputs]
        if len(set(keys)) < len(keys):
            raise _error(400, "VALIDATION_ERROR", "Duplicate IDs found in batch input")
        owners = {o["id"] for o in self._owners}
        results, errors = [], []
        for key, item in zip(keys, inputs, strict=True):
            props = {k: "" if v is None else str(v) for k, v in item["properties"].items()}
            owner = props.get("hubspot_owner_id")
            if owner and owner not in owners:
                detail = _detail(
                    "hubspot_owner_id", "INVALID_OWNER_ID", f"{owner} is not a valid owner id"
                )
                context = {"ids": [key], "propertyName": ["hubspot_owner_id"]}
                errors.append(_batch_error("VALIDATION_ERROR", _invalid([detail]), context))
                continue
            record, new = self._write(key, props)
            public = self._public(record, [*props, self.id_property])
            results.append({**public, "new": new})
        answer = {"status": "COMPLETE", "results": results, "startedAt": started}
        answer |= {"requestedAt": started, "completedAt": _iso(self._stamp())}
        if errors:
            return 207, answer | {"errors": errors, "numErrors": len(errors)}
        return 200, answer

    def read(self, body: dict[str, Any], _query: Query) -> tuple[int, dict[str, Any]]:
        started = _iso(self._stamp())
        prop = body.get("idProperty") or "hs_object_id"
        by_value = {str(r.get(prop)): r for r in self.contacts.values()}
        results, missing = [], []
        for item in self._inputs(body):
            record = by_value.get(str(item["id"]))
            if record is None:
                missing.append(str(item["id"]))
            else:
                results.append(self._public(record, body.get("properties")))
        answer = {"status": "COMPLETE", "results": results, "startedAt": started}
        answer["completedAt"] = _iso(self._stamp())
        if not missing:
            return 200, answer
        error = _batch_error(
            "OBJECT_NOT_FOUND",
            "Could not get some CONTACT objects, they may be deleted or not exist. "
            "Check that ids are valid.",
            {"ids": missing},
        )
        return 207, answer | {"errors": [error], "numErrors": 1}

    def search(self, body: dict[str, Any], _query: Query) -> tuple[int, dict[str, Any]]:
        limit = int(body.get("limit") or 10)
        offset = int(body.get("after") or 0)
        if limit > 200:
            raise _error(400, "VALIDATION_ERROR", "limit must be at most 200")
        if offset >= self.search_cap:
            raise _error(
                400,
                "VALIDATION_ERROR",
                f"The search API is limited to {self.search_cap} results per query.",
            )
        groups = body.get("filterGroups") or []
        found = [r for r in self.contacts.values() if not groups or _any_group(r, groups)]
        found.sort(key=lambda r: int(r["hs_object_id"]))
        for sort in reversed(body.get("sorts") or []):
            name, down = _sort_spec(sort)
            found.sort(key=lambda r, n=name: _sort_key(r, n), reverse=down)
        page = found[offset : min(offset + limit, self.search_cap)]
        answer: dict[str, Any] = {
            "total": len(found),
            "results": [self._public(r, body.get("properties")) for r in page],
        }
        if offset + len(page) < len(found):
            after = str(offset + len(page))
            answer["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return 200, answer

    def owners(self, _body: dict[str, Any], query: Query) -> tuple[int, dict[str, Any]]:
        limit = min(int(query.get("limit", ["100"])[0]), 500)
        offset = int(query.get("after", ["0"])[0])
        owners = self._owners
        if "email" in query:
            owners = [o for o in owners if o["email"].lower() == query["email"][0].lower()]
        answer: dict[str, Any] = {"results": owners[offset : offset + limit]}
        if offset + limit < len(owners):
            after = str(offset + limit)
            answer["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return 200, answer

    def properties(self, _body: dict[str, Any], _query: Query) -> tuple[int, dict[str, Any]]:
        stamp = _iso(self._stamp())
        results = [p | {"createdAt": stamp, "updatedAt": stamp} for p in self._properties.values()]
        return 200, {"results": results}

    def route(
        self, method: str, target: str, body: dict[str, Any], authorization: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """One request: (status, JSON body, headers). Called by the handler thread."""
        parts = urlsplit(target)
        path, query = parts.path.rstrip("/"), parse_qs(parts.query)
        n_inputs = len(body.get("inputs") or [])
        with self._lock:
            scope, name = ROUTES.get((method, path), ("", ""))
            try:
                headers = self._admit(method, path, n_inputs, scope, authorization)
                if not scope:
                    raise _error(404, "OBJECT_NOT_FOUND", f"No route for {method} {path}")
                status, answer = getattr(self, name)(body, query)
            except Reply as reply:
                return reply.status, reply.body, self._limit_headers() | reply.headers
            return status, answer, headers


def _any_group(record: dict[str, Any], groups: list[dict[str, Any]]) -> bool:
    return any(all(_matches(record, f) for f in g.get("filters") or []) for g in groups)


def _matches(record: dict[str, Any], flt: dict[str, Any]) -> bool:
    name, op = flt["propertyName"], flt["operator"]
    value = record.get(name)
    if op == "HAS_PROPERTY":
        return value not in (None, "")
    if op == "NOT_HAS_PROPERTY":
        return value in (None, "")
    if value is None:
        return False
    if op == "IN":
        return str(value) in [str(v) for v in flt.get("values") or []]
    have, want = (
        (_ms(value), _ms(flt["value"])) if name in DATES else (str(value), str(flt["value"]))
    )
    checks = {
        "EQ": have == want,
        "NEQ": have != want,
        "GT": have > want,
        "GTE": have >= want,
        "LT": have < want,
        "LTE": have <= want,
    }
    if op not in checks:
        raise _error(400, "VALIDATION_ERROR", f"operator {op} is not supported here")
    return checks[op]


def _sort_spec(sort: Any) -> tuple[str, bool]:
    if isinstance(sort, dict):
        return sort["propertyName"], sort.get("direction", "ASCENDING") == "DESCENDING"
    text = str(sort)
    return text.lstrip("-"), text.startswith("-")


def _sort_key(record: dict[str, Any], name: str) -> tuple[int, Any]:
    value = record.get(name)
    if value is None:
        return (1, "")
    return (0, _ms(value) if name in DATES else str(value))


def _handler(api: HubSpotApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = -1  # headers and body leave in one write (no Nagle delay)
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = None
            if not isinstance(body, dict):
                status, answer, headers = 400, {"status": "error", "message": "bad json"}, {}
            else:
                auth = self.headers.get("Authorization", "")
                status, answer, headers = api.route(self.command, self.path, body, auth)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
