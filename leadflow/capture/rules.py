"""How a source's records become lead fields: the per-source mapping file (YAML).

See docs/configuration.md "Source mappings" for the format with an example. Without a mapping file,
columns named like lead fields map to themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from leadflow import config
from leadflow.rules.fields import LEAD_FIELDS

# `name` is split into first/last when those are absent.
MAPPABLE = (*LEAD_FIELDS, "name", "external_id", "outcome")
# Fields of an engagement event (mapping `target: events`).
EVENT_FIELDS = ("email", "external_id", "event_type", "occurred_at", "url", "event_id")
# Fields of a sales activity (mapping `target: activities`): the lead (email or external id),
# the rep (email or code), what was done, when, why (reject, lost, not now), the source's own
# id for it, and whether a machine did it (automated touches never meet an SLA).
ACTIVITY_FIELDS = (
    "email",
    "external_id",
    "rep",
    "activity_type",
    "occurred_at",
    "reason",
    "activity_id",
    "automated",
)
# What each target's columns may map to, and what a file of that target must hold when its
# columns are named like the fields (besides the lead's email or external id).
TARGET_FIELDS = {"leads": MAPPABLE, "events": EVENT_FIELDS, "activities": ACTIVITY_FIELDS}
TARGET_REQUIRED = {
    "events": ("event_type", "occurred_at"),
    "activities": ("rep", "activity_type", "occurred_at"),
}
MERGE_POLICIES = ("newest_non_empty", "oldest_non_empty", "earliest", "latest")

DEFAULT_NULL_MARKERS = ("", "n/a", "na", "null", "none", "-", "--", "select", "#n/a", "nan")
DEFAULT_WON = ("won", "win", "converted", "1", "true", "yes", "y")
DEFAULT_LOST = ("lost", "not converted", "0", "false", "no", "n")

# What an invalid optional value does: blank the field (keeping the raw value in
# `attributes._invalid`) or quarantine the whole record.
InvalidPolicy = Literal["blank", "quarantine"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutcomeMapping(_Strict):
    """A column carrying a known historical outcome (for backtests and learning)."""

    column: str
    won: tuple[str, ...] = DEFAULT_WON
    lost: tuple[str, ...] = DEFAULT_LOST

    @field_validator("won", "lost")
    @classmethod
    def _lower(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(v).strip().lower() for v in values)


class MergePolicy(_Strict):
    """Which value wins when a record merges into an existing lead."""

    default: Literal["newest_non_empty", "oldest_non_empty"] = "newest_non_empty"
    fields: dict[str, Literal["newest_non_empty", "oldest_non_empty", "earliest", "latest"]] = (
        Field(default_factory=lambda: {"source": "oldest_non_empty", "created_at": "earliest"})
    )

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(LEAD_FIELDS))
        if unknown:
            raise ValueError(f"unknown lead field(s) {unknown}; known: {list(LEAD_FIELDS)}")
        for name, policy in value.items():
            if policy in ("earliest", "latest") and name != "created_at":
                raise ValueError(f"{name}: '{policy}' applies to created_at only")
        return value

    def policy(self, field: str) -> str:
        return self.fields.get(field, self.default)


class ApiSource(_Strict):
    """A paginated REST API: how to page, where the records are, how to resume."""

    records: str = "data"  # key of the record list in each page ("" = the body is the list)
    next: str | None = "next"  # key of the next page's URL or cursor; None = page numbers
    next_param: str | None = None  # query parameter to send a cursor token in
    page_param: str = "page"
    page_size_param: str | None = "per_page"
    page_size: int = Field(default=100, ge=1, le=10_000)
    since_param: str | None = "since"  # query parameter for the incremental cursor
    cursor_field: str | None = "updated_at"  # record field whose max becomes the next cursor
    token_block: str | None = None  # name of a Prefect Secret block holding the API token
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0, le=20)
    backoff_seconds: float = Field(default=1.0, ge=0)
    max_backoff_seconds: float = Field(default=60.0, ge=0)
    max_pages: int | None = Field(default=None, ge=1)


class SourceMapping(_Strict):
    source: str | None = None  # default source name (the CLI's --source wins)
    target: Literal["leads", "events", "activities"] = "leads"
    format: Literal["auto", "csv", "jsonl"] = "auto"
    encoding: str = "utf-8"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    columns: dict[str, str] = Field(default_factory=dict)  # source column -> lead field
    external_id: str | None = None  # source column holding a CRM/form id
    external_id_namespace: str | None = None  # defaults to the source name
    required: tuple[str, ...] | None = None  # source columns that must be present
    # Source columns the mapping names that a file may lack (their fields stay empty);
    # any other named column missing from a file's header is an error before anything is
    # written, so a typo is never a silently empty field.
    optional: tuple[str, ...] = ()
    null_markers: tuple[str, ...] = DEFAULT_NULL_MARKERS
    values: dict[str, dict[str, str]] = Field(default_factory=dict)  # field -> {raw: value}
    ignore: tuple[str, ...] = ()
    outcome: OutcomeMapping | None = None
    merge: MergePolicy = Field(default_factory=MergePolicy)
    on_invalid: dict[str, InvalidPolicy] = Field(default_factory=dict)
    api: ApiSource | None = None

    @field_validator("columns")
    @classmethod
    def _targets_are_fields(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if "target" not in info.data:
            return value  # the target itself is wrong: that is the message
        known = TARGET_FIELDS[info.data["target"]]
        for column, field in value.items():
            if field not in known:
                raise ValueError(
                    f"column {column!r} maps to unknown field {field!r}; fields: {list(known)}"
                )
        targets = list(value.values())
        repeated = sorted({f for f in targets if targets.count(f) > 1})
        if repeated:
            raise ValueError(f"several columns map to the same field(s): {repeated}")
        return value

    @field_validator("values")
    @classmethod
    def _value_maps_on_fields(
        cls, value: dict[str, dict[str, str]], info: ValidationInfo
    ) -> dict[str, dict[str, str]]:
        if "target" not in info.data:
            return value
        known = TARGET_FIELDS[info.data["target"]]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"value maps for unknown field(s) {unknown}")
        return value

    @field_validator("on_invalid")
    @classmethod
    def _optional_fields_only(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = {
            "phone",
            "country",
            "website",
            "created_at",
            "first_name",
            "last_name",
            "company",
            "title",
        }
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"on_invalid applies to {sorted(allowed)}, not {unknown}")
        return value

    @field_validator("null_markers")
    @classmethod
    def _fold(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(v).strip().lower() for v in value)

    @model_validator(mode="after")
    def _outcome_not_mapped_twice(self) -> SourceMapping:
        if self.outcome and self.outcome.column in self.columns:
            raise ValueError(f"outcome column {self.outcome.column!r} is also in columns")
        return self

    @model_validator(mode="after")
    def _optional_names_a_column(self) -> SourceMapping:
        named = set(self.named_columns())
        unknown = [c for c in self.optional if c not in named]
        if unknown:
            raise ValueError(
                f"optional column(s) {unknown} are not named in columns, external_id or outcome"
            )
        required = set(self.required or ())
        both = sorted(required & set(self.optional))
        if both:
            raise ValueError(f"column(s) {both} are both required and optional")
        return self

    def named_columns(self) -> tuple[str, ...]:
        """Every source column this mapping refers to by name."""
        names = [*self.columns, *(c for c in (self.external_id,) if c)]
        if self.outcome is not None:
            names.append(self.outcome.column)
        names += [c for c in self.required or () if c not in names]
        return tuple(dict.fromkeys(names))

    def expected_columns(self) -> tuple[str, ...]:
        """Columns a file must have: every named column not marked ``optional``."""
        return tuple(c for c in self.named_columns() if c not in self.optional)

    def column_for(self, field: str) -> str | None:
        for column, target in self.columns.items():
            if target == field:
                return column
        return None

    def required_columns(self) -> tuple[str, ...]:
        """Columns a file must have; by default the identity columns the mapping names."""
        if self.required is not None:
            return self.required
        identity = [c for c in (self.column_for("email"), self.external_id) if c]
        return tuple(identity)

    def resolve(self, header: list[str]) -> SourceMapping:
        """Fill in identity mapping for columns named like lead fields (when none are mapped)."""
        if self.columns or self.external_id:
            return self
        if self.target != "leads":
            return self._resolve_linked(header)
        columns: dict[str, str] = {}
        external_id = None
        outcome = self.outcome
        for column in header:
            key = column.strip().lower().replace(" ", "_")
            if key in LEAD_FIELDS or key == "name":
                columns[column] = key
            elif key == "external_id":
                external_id = column
            elif key == "outcome" and outcome is None:
                outcome = OutcomeMapping(column=column)
        required = self.required
        if required is None:
            required = tuple(
                c
                for c in (next((c for c, f in columns.items() if f == "email"), None), external_id)
                if c
            )
            if not required:
                required = ("email",)
        return self.model_copy(
            update={
                "columns": columns,
                "external_id": external_id,
                "outcome": outcome,
                "required": required,
            }
        )

    def _resolve_linked(self, header: list[str]) -> SourceMapping:
        """Events and activities: columns named like the target's fields map to them."""
        fields = TARGET_FIELDS[self.target]
        columns: dict[str, str] = {}
        external_id = None
        for column in header:
            key = column.strip().lower().replace(" ", "_")
            if key == "external_id":
                external_id = column
            elif key in fields:
                columns[column] = key
        required = self.required
        if required is None:
            identity = [c for c, f in columns.items() if f == "email"] + (
                [external_id] if external_id else []
            )
            needed = TARGET_REQUIRED[self.target]
            required = (*identity[:1], *[c for c, f in columns.items() if f in needed])
            if not identity:
                required = ("email", *required)
        return self.model_copy(
            update={"columns": columns, "external_id": external_id, "required": required}
        )


def load_mapping(path: str | Path | None) -> tuple[SourceMapping, str]:
    """The mapping in ``path`` (and its version), or the default identity mapping."""
    if path is None:
        return SourceMapping(), "default"
    mapping, version = config.load(SourceMapping, Path(path))
    return mapping, version
