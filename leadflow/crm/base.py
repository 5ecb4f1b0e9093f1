"""What every CRM adapter offers the sync, and the errors it raises.

An adapter talks to one CRM through that CRM's own client library (HubSpot:
``hubspot-api-client``; Salesforce: ``simple-salesforce``). The sync (``leadflow/crm/sync.py``)
never builds an HTTP request itself: it hands an adapter ``Record``s already mapped to the
CRM's property names (``leadflow/crm/mapping.py``) and gets one ``Outcome`` per record back.

Records are keyed by ``key``: the value of the CRM property that holds leadflow's lead id
(``id_property`` in the mapping: a unique, external-id property), so an upsert after a crash
updates the record the first attempt created and never makes a second one.

Errors: a call that fails as a whole raises ``CrmError`` (``permanent`` says whether trying
again can help; ``retry_after`` is the CRM's own word on when to come back); a batch that
partly fails returns ``Outcome(ok=False, error=<the CRM's message>)`` for the records that
failed, and the others succeed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Record:
    """One lead as the CRM should hold it."""

    lead_id: int
    key: str  # the id property's value: str(lead_id)
    # CRM property name -> value (owner id included); None clears the property in the CRM
    properties: dict[str, Any]
    email: str | None = None  # HubSpot may match on email when the id property is not set


@dataclass(frozen=True)
class Outcome:
    """What became of one record of a batch."""

    lead_id: int
    ok: bool
    crm_id: str | None = None  # the CRM's own id of the record (HubSpot hs_object_id, SF Id)
    created: bool | None = None  # True when this call created the record
    error: str | None = None  # the CRM's message, free of personal data where it can be
    permanent: bool = False  # retrying the same values cannot succeed (bad property, value)


@dataclass
class Usage:
    """What a sync cost: for the summary, the bench and doctor."""

    calls: int = 0  # HTTP requests made (retries included)
    records: int = 0  # records sent in upserts
    throttled: int = 0  # 429 answers (or Salesforce REQUEST_LIMIT_EXCEEDED)
    waited_seconds: float = 0.0  # slept to respect a limit or a Retry-After
    limit: dict[str, Any] = field(default_factory=dict)  # the CRM's last word on its limit


class CrmError(Exception):
    """A call that failed as a whole. ``status`` is the HTTP status (None: no answer)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        permanent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent
        self.retry_after = retry_after


class AuthError(CrmError):
    """401 (token expired or wrong) or 403 (a scope or permission missing): no record of any
    batch can go until a person fixes the credentials, so the sync stops and says so."""


class RateLimited(CrmError):
    """The CRM's limit is reached (429, or Salesforce's daily budget): come back after
    ``retry_after`` seconds."""


class Adapter(Protocol):
    """One CRM. ``batch_size`` is the most records one upsert call takes."""

    name: str  # "hubspot" | "salesforce"
    batch_size: int
    usage: Usage

    def upsert(self, records: Sequence[Record]) -> list[Outcome]:
        """Create or update ``records`` (any number: the adapter splits them into calls of
        ``batch_size``, or one bulk job above its threshold), keyed by the id property.
        One ``Outcome`` per record, in any order. Raises ``CrmError`` when a call fails as a
        whole (after honouring up to a few short ``Retry-After``s itself)."""
        ...

    def read(self, keys: Sequence[str], properties: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The CRM's current values of ``properties`` for the records whose id property is
        one of ``keys``: key -> {property: value, plus "id" (the CRM's id)}. Records the CRM
        does not have are absent."""
        ...

    def owners(self) -> dict[str, str]:
        """Every user a record can be assigned to: lower-cased email -> owner/user id."""
        ...

    def changed_since(
        self, cursor: str | None, properties: Sequence[str]
    ) -> Iterator[tuple[dict[str, Any], str]]:
        """Records (with an id property) modified after ``cursor`` (an ISO-8601 time; None:
        all), oldest first, paged as the CRM pages: (record, cursor after it). A record is
        {property: value, "id": crm id, "modified_at": ISO time}."""
        ...

    def properties(self) -> set[str]:
        """The names of the properties (fields) the record type has: mapping checks."""
        ...

    def probe(self) -> str:
        """One cheap authenticated call for ``leadflow doctor``: a line saying what was
        reached (and the limit left, where the CRM says). Raises ``CrmError``."""
        ...
