"""Capture, step one: map a chunk of records as received to candidate lead rows (pure).

``prepare_records`` is the entry point; the helpers above it turn one source column into
text a lead field can hold (``as_text``, ``null_markers``, ``value_map``) and are shared
with the events capture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from leadflow.capture import normalise as nz
from leadflow.capture.rules import SourceMapping
from leadflow.capture.sources import PARSE_ERROR, RAW, RECORD_NO, RecordChunk

WRONG_TYPE = object()  # marker for dict/list values where a scalar was expected


# --------------------------------------------------------------------------- mapping


def as_text(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Scalars as text (JSON numbers and booleans included); dicts/lists flagged."""
    if values.dtype == "str" or pd.api.types.infer_dtype(values, skipna=True) in (
        "string",
        "empty",
    ):
        return values, pd.Series(False, index=values.index)
    if values.dtype != object:
        text = values.astype(object)
        return text.where(values.notna(), None), pd.Series(False, index=values.index)

    def convert(value: Any) -> Any:
        if value is None or (isinstance(value, float) and value != value):
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else repr(value)
        return WRONG_TYPE

    converted = values.map(convert)
    wrong = converted.map(lambda v: v is WRONG_TYPE).astype(bool)
    return converted.where(~wrong, None), wrong


def null_markers(values: pd.Series, markers: tuple[str, ...]) -> pd.Series:
    present = values.notna()
    if not present.any():
        return values
    folded = values[present].astype(str).str.strip().str.lower()
    is_marker = pd.Series(False, index=values.index)
    is_marker[present] = folded.isin(markers).to_numpy()
    return values.where(~is_marker, None)


def value_map(values: pd.Series, table: dict[str, str]) -> pd.Series:
    if not table:
        return values
    folded = {str(k).strip().lower(): v for k, v in table.items()}
    present = values.notna()
    keys = values[present].astype(str).str.strip().str.lower()
    mapped = keys.map(folded)
    out = values.copy()
    hit = mapped.notna()
    out.loc[hit.index[hit]] = mapped[hit]
    return out


def _split_name(full: pd.Series) -> tuple[pd.Series, pd.Series]:
    parts = full.astype("str").str.strip().str.rsplit(" ", n=1)
    first = parts.str[0]
    last = parts.map(lambda p: p[1] if isinstance(p, list) and len(p) > 1 else None)
    return first.where(full.notna(), None), last.where(full.notna(), None)


def _short(value: Any) -> Any:
    """A raw value for an ``_invalid`` note: text as is, anything else as JSON, cut if long."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else f"<{len(text)} characters>"


@dataclass
class _RawFields:
    """A chunk's mapped columns as text, keyed by lead field: ``values`` after null markers and
    value maps, ``originals`` as received, ``wrong_type`` where a dict/list came instead of a
    scalar."""

    index: pd.Index
    values: dict[str, pd.Series] = field(default_factory=dict)
    originals: dict[str, pd.Series] = field(default_factory=dict)
    wrong_type: dict[str, pd.Series] = field(default_factory=dict)

    def __call__(self, field_name: str) -> pd.Series:
        """The field's text, or all None when the source has no column for it."""
        return self.values.get(
            field_name, pd.Series([None] * len(self.index), index=self.index, dtype=object)
        )


def prepare_records(
    chunk: RecordChunk,
    mapping: SourceMapping,
    *,
    source: str,
    now: datetime,
    default_phone_region: str | None = None,
) -> pd.DataFrame:
    """Map and normalise a chunk of records into candidate lead rows (pure).

    The result has one row per record with the lead fields, ``attributes`` (a dict per row:
    unmapped columns, and ``_invalid`` for optional values that were blanked), and the gate's
    helper columns: ``record_no``, ``raw``, ``parse_error``, ``identity``,
    ``invalid_fields``, ``record_time``.
    """
    mapping = mapping.resolve(chunk.columns)
    records = chunk.records
    out = _record_columns(records)
    raw = _read_fields(records, mapping)
    invalid = _normalise_fields(
        out, raw, records, mapping, source=source, now=now, region=default_phone_region
    )
    strict, notes = _apply_invalid_policies(out, invalid, raw, records, mapping)
    strict += _reject_wrong_identity_types(out, raw.wrong_type)
    out["invalid_fields"] = _join_flags(strict, records.index)
    out["attributes"] = attributes_json(records, mapping, chunk.columns, notes)
    out["blanked_fields"] = _join_flags(
        [mask.map({True: name, False: None}) for name, mask in _note_masks(notes).items()],
        records.index,
    )
    _add_gate_columns(out, now)
    return out


def _record_columns(records: pd.DataFrame) -> pd.DataFrame:
    """The output frame, started with the record's number, raw text and parse error."""
    out = pd.DataFrame(index=records.index)
    out["record_no"] = records[RECORD_NO].astype("int64")
    out["raw"] = records[RAW]
    out["parse_error"] = records[PARSE_ERROR]
    return out


def _read_fields(records: pd.DataFrame, mapping: SourceMapping) -> _RawFields:
    """Each mapped column as text under its lead field (null markers blanked, values mapped),
    the external id, and first/last names split from a full name where they are missing."""
    markers = mapping.null_markers
    raw = _RawFields(records.index)
    for column, field_name in mapping.columns.items():
        if column not in records.columns:
            continue
        raw.originals[field_name] = records[column]
        text, wrong = as_text(records[column])
        text = null_markers(text, markers)
        raw.values[field_name] = value_map(text, mapping.values.get(field_name, {}))
        raw.wrong_type[field_name] = wrong
    if mapping.external_id and mapping.external_id in records.columns:
        text, wrong = as_text(records[mapping.external_id])
        raw.values["external_id"] = null_markers(text, markers)
        raw.wrong_type["external_id"] = wrong
    if "name" in raw.values:
        first, last = _split_name(nz.clean_text(raw("name")))
        raw.values["first_name"] = raw("first_name").where(raw("first_name").notna(), first)
        raw.values["last_name"] = raw("last_name").where(raw("last_name").notna(), last)
    return raw


def _normalise_fields(
    out: pd.DataFrame,
    raw: _RawFields,
    records: pd.DataFrame,
    mapping: SourceMapping,
    *,
    source: str,
    now: datetime,
    region: str | None,
) -> dict[str, pd.Series]:
    """Normalise each lead field into ``out``; returns the per-field masks of invalid values
    (a wrong JSON type on a field counts as an invalid value of it)."""
    invalid: dict[str, pd.Series] = {}
    out["email"], _ = nz.normalise_email(raw("email"))
    namespace = mapping.external_id_namespace or source
    external = nz.clean_text(raw("external_id"))
    out["external_id"] = (namespace + ":" + external.astype("str")).where(external.notna(), None)
    for name in ("first_name", "last_name"):
        out[name], invalid[name] = nz.normalise_name(raw(name))
    for name in ("company", "title"):
        out[name], invalid[name] = nz.normalise_text(raw(name))
    out["country"], invalid["country"] = nz.normalise_country(raw("country"))
    out["phone"], invalid["phone"] = nz.normalise_phone(
        raw("phone"), out["country"], default_region=region
    )
    out["website"], invalid["website"] = nz.normalise_website(raw("website"))
    out["created_at"], invalid["created_at"] = nz.normalise_timestamp(raw("created_at"), now=now)
    source_values, _ = nz.normalise_text(raw("source"))
    out["source"] = source_values.where(source_values.notna(), source)
    out["outcome"], invalid["outcome"] = _outcome(records, mapping)
    for name, wrong in raw.wrong_type.items():
        if name in invalid:
            invalid[name] = invalid[name] | wrong
    return invalid


def _apply_invalid_policies(
    out: pd.DataFrame,
    invalid: dict[str, pd.Series],
    raw: _RawFields,
    records: pd.DataFrame,
    mapping: SourceMapping,
) -> tuple[list[pd.Series], dict[str, pd.Series]]:
    """Per field with invalid values, its ``on_invalid`` policy: quarantine flags the record
    (returned as flag series); otherwise the value is blanked in ``out`` (``created_at`` is
    kept) and the original returned as a note for ``attributes._invalid``."""
    quarantine_fields = {f for f, policy in mapping.on_invalid.items() if policy == "quarantine"}
    strict: list[pd.Series] = []
    notes: dict[str, pd.Series] = {}
    for name, mask in invalid.items():
        if not mask.any():
            continue
        if name in quarantine_fields:
            strict.append(mask.map(lambda bad, field_name=name: field_name if bad else None))
        else:
            if name == "outcome":
                original = _outcome_raw(records, mapping)
            else:
                original = raw.originals.get(name, raw(name))
            notes[name] = original.astype(object).where(mask, None)
            if name in out.columns and name != "created_at":
                out[name] = out[name].where(~mask, None)
    return strict, notes


def _reject_wrong_identity_types(
    out: pd.DataFrame, wrong_type: dict[str, pd.Series]
) -> list[pd.Series]:
    """An email or external id that is not a text value quarantines the record: blank it in
    ``out`` and return the flags."""
    strict: list[pd.Series] = []
    for name in ("email", "external_id"):
        wrong = wrong_type.get(name)
        if wrong is not None and wrong.any():
            strict.append(
                wrong.map(
                    lambda bad, field_name=name: f"{field_name} (not a text value)" if bad else None
                )
            )
            out[name] = out[name].where(~wrong, None)
    return strict


def _add_gate_columns(out: pd.DataFrame, now: datetime) -> None:
    """The gate's ``identity`` (email, else external id) and ``record_time`` (created, else
    now)."""
    identity = out["email"].where(out["email"].notna(), out["external_id"])
    # A record that could not be parsed fails on that alone, not also on identity.
    out["identity"] = identity.where(out["parse_error"].isna(), "(unparsed)")
    out["record_time"] = out["created_at"].where(out["created_at"].notna(), pd.Timestamp(now))


def _note_masks(notes: dict[str, pd.Series]) -> dict[str, pd.Series]:
    return {name: values.notna() for name, values in notes.items()}


def _join_flags(flags: list[pd.Series], index: pd.Index) -> pd.Series:
    """Per row, the non-null flags joined with ", " (None when there are none)."""
    out = np.full(len(index), None, dtype=object)
    for flag in flags:
        values = flag.to_numpy(dtype=object)
        has = pd.notna(values)
        if not has.any():
            continue
        current = out[has]
        out[has] = [
            new if old is None else f"{old}, {new}"
            for old, new in zip(current, values[has], strict=True)
        ]
    return pd.Series(out, index=index, dtype=object)


def _outcome_raw(records: pd.DataFrame, mapping: SourceMapping) -> pd.Series:
    if mapping.outcome is None or mapping.outcome.column not in records.columns:
        return pd.Series([None] * len(records), index=records.index, dtype=object)
    text, _ = as_text(records[mapping.outcome.column])
    return null_markers(text, mapping.null_markers)


def _outcome(records: pd.DataFrame, mapping: SourceMapping) -> tuple[pd.Series, pd.Series]:
    raw = _outcome_raw(records, mapping)
    if mapping.outcome is None:
        return raw, pd.Series(False, index=records.index)
    folded = raw.astype("str").str.strip().str.lower()
    outcome = pd.Series([None] * len(raw), index=raw.index, dtype=object)
    outcome[folded.isin(mapping.outcome.won) & raw.notna()] = "won"
    outcome[folded.isin(mapping.outcome.lost) & raw.notna()] = "lost"
    return outcome, raw.notna() & outcome.isna()


def attributes_json(
    records: pd.DataFrame,
    mapping: SourceMapping,
    columns: list[str],
    notes: dict[str, pd.Series],
) -> pd.Series:
    """Per record, unmapped columns as a JSON object (text), plus ``_invalid`` notes."""
    used = set(mapping.columns) | set(mapping.ignore)
    if mapping.external_id:
        used.add(mapping.external_id)
    if mapping.outcome:
        used.add(mapping.outcome.column)
    extra = [c for c in columns if c not in used and c in records.columns]
    result = pd.Series([None] * len(records), index=records.index, dtype=object)
    if extra:
        frame = records[extra].copy()
        for name in extra:
            frame[name] = null_markers(frame[name], mapping.null_markers)
        present = frame.notna().any(axis=1)
        if present.any():
            kept = frame[present]
            lines = kept.to_json(orient="records", lines=True, force_ascii=False).split("\n")
            result[present] = lines[: len(kept)]
    if notes:
        note_frame = pd.DataFrame(notes)
        flagged = note_frame.notna().any(axis=1)
        for index in note_frame.index[flagged]:
            bad = {
                k: _short(v) for k, v in note_frame.loc[index].items() if v is not None and v == v
            }
            current = json.loads(result[index]) if isinstance(result[index], str) else {}
            current["_invalid"] = bad
            result[index] = json.dumps(current, ensure_ascii=False, default=str)
    return result
