"""The data-quality gate every hop ends with: a Great Expectations suite per hop.

A suite (``suites/<hop>.yaml``) has row-level expectations, whose failing rows are
quarantined with the names of the expectations they broke, and batch-level expectations,
which decide the hop: if one fails, or the share of quarantined rows exceeds the limit, the
gate raises ``GateFailed`` and the flow run ends Failed. Every evaluation is stored in
``dq_results`` and, redacted of row values, in GX's validation store for Data Docs.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Connection

from leadflow import config, store
from leadflow import tables as t
from leadflow.settings import bundled, get_settings

# The gates' suites ship with the package (the checkout's suites/, or the wheel's copy).
SUITES_DIR = bundled("suites")
log = logging.getLogger(__name__)


class ExpectationSpec(BaseModel):
    """One expectation: a GX expectation type, its arguments, and why it exists."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    expect: str = Field(pattern=r"^expect_[a-z0-9_]+$")
    why: str = ""
    detail_column: str | None = None  # a column whose value explains a row's failure

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SuiteSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str
    key: str  # column that identifies a row (a record number or a lead id)
    description: str = ""
    rows: tuple[ExpectationSpec, ...] = ()
    batch: tuple[ExpectationSpec, ...] = ()

    @model_validator(mode="after")
    def _names_unique_and_known(self) -> SuiteSpec:
        names = [e.name for e in (*self.rows, *self.batch)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"expectation names repeated: {repeated}")
        import great_expectations as gx

        for spec in (*self.rows, *self.batch):
            if not hasattr(gx.expectations, _class_name(spec.expect)):
                raise ValueError(f"{spec.name}: unknown GX expectation {spec.expect!r}")
        return self


def _columns(specs: tuple[ExpectationSpec, ...]) -> list[str]:
    """Columns the expectations read (GX is handed only these: it hashes what it gets)."""
    names: dict[str, None] = {}
    for spec in specs:
        kwargs = spec.kwargs()
        for key in ("column", "column_A", "column_B"):
            if isinstance(kwargs.get(key), str):
                names[kwargs[key]] = None
        for key in ("column_list", "column_set"):
            for name in kwargs.get(key) or ():
                names[str(name)] = None
        if spec.detail_column:
            names[spec.detail_column] = None
    return list(names)


def _class_name(expect: str) -> str:
    return "".join(part.capitalize() for part in expect.split("_"))


@lru_cache(maxsize=16)
def load_suite(hop: str, directory: str | None = None) -> SuiteSpec:
    path = Path(directory) if directory else SUITES_DIR
    spec, _version = config.load(SuiteSpec, path / f"{hop}.yaml")
    return spec


class GateFailed(RuntimeError):
    """A batch-level expectation failed: the hop stops and nothing downstream runs."""

    def __init__(self, result: GateResult) -> None:
        failed = ", ".join(
            c["name"] for c in result.checks if not c["success"] and c["level"] == "batch"
        )
        super().__init__(
            f"gate '{result.hop}' failed for batch {result.batch_ref}: {failed} "
            f"({result.quarantined} of {result.evaluated} rows quarantined)"
        )
        self.result = result


@dataclass
class GateResult:
    hop: str
    suite: str
    batch_ref: str
    success: bool
    evaluated: int
    passed: int
    quarantined: int
    checks: list[dict[str, Any]]
    validations: list[Any] = field(default_factory=list, repr=False)

    @property
    def quarantine_rate(self) -> float:
        return self.quarantined / self.evaluated if self.evaluated else 0.0

    @property
    def failed_checks(self) -> list[str]:
        return [c["name"] for c in self.checks if not c["success"]]


@dataclass
class RowSplit:
    passed: pd.DataFrame
    quarantined: pd.DataFrame  # the failing rows plus a `reasons` column (list of str)
    checks: list[dict[str, Any]]
    validation: Any = None


# --------------------------------------------------------------------------- GX plumbing

_gx_lock = threading.Lock()


@lru_cache(maxsize=4)
def _context(root: str) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints every in-memory batch by hashing all of it; nothing here reads the
    # fingerprint and it costs a fifth of each validation, so switch it off.
    pandas_execution_engine.HASH_THRESHOLD = 0

    Path(root).mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=root)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs_dir = get_settings().data_docs_dir
    site_name = "leadflow"
    if site_name not in context.get_site_names():
        context.add_data_docs_site(
            site_name=site_name,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return context


def _gx_suite(context: Any, name: str, specs: tuple[ExpectationSpec, ...], level: str) -> Any:
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name)
    for spec in specs:
        cls = getattr(gx.expectations, _class_name(spec.expect))
        suite.add_expectation(
            cls(**spec.kwargs(), meta={"name": spec.name, "level": level}, notes=spec.why or None)
        )
    return context.suites.add_or_update(suite)


@lru_cache(maxsize=32)
def _prepared(hop: str, level: str, root: str) -> tuple[Any, Any]:
    """(batch definition, suite) for a hop's row or batch suite, created once per process."""
    context = _context(root)
    spec = load_suite(hop)
    specs = spec.rows if level == "rows" else spec.batch
    suite = _gx_suite(context, f"{spec.suite}.{level}", specs, level)
    try:
        source = context.data_sources.get("leadflow")
    except (KeyError, ValueError, LookupError):
        source = context.data_sources.add_pandas("leadflow")
    asset_name = f"{hop}.{level}"
    try:
        asset = source.get_asset(asset_name)
    except (KeyError, ValueError, LookupError):
        asset = source.add_dataframe_asset(asset_name)
    try:
        batch_definition = asset.get_batch_definition("batch")
    except (KeyError, ValueError, LookupError):
        batch_definition = asset.add_batch_definition_whole_dataframe("batch")
    return batch_definition, suite


@contextmanager
def _across_processes(root: str) -> Iterator[None]:
    """One process at a time sets up the GX file context: it writes its config, suites and
    data sources to files that other processes (workers, ``leadflow serve``, the lane)
    read; two at once left a half-written file that failed with a TypeError (found with two
    ``leadflow serve`` processes started together)."""
    import fcntl

    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / ".leadflow-setup.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _validate(hop: str, level: str, frame: pd.DataFrame, key: str | None) -> Any:
    root = str(get_settings().gx_dir)
    with _gx_lock:
        with _across_processes(root):
            batch_definition, suite = _prepared(hop, level, root)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result_format: dict[str, Any] = {
            "result_format": "COMPLETE",
            "partial_unexpected_count": 0,
            "return_unexpected_index_query": False,
        }
        if key:
            result_format["unexpected_index_column_names"] = [key]
        return batch.validate(suite, result_format=result_format)


def _failing_keys(result: Any, key: str) -> list[Any]:
    keys = []
    for item in result.result.get("unexpected_index_list") or []:
        value = item.get(key) if isinstance(item, dict) else item
        keys.append(value.item() if hasattr(value, "item") else value)
    return keys


# --------------------------------------------------------------------------- the gate


def split_rows(hop: str, frame: pd.DataFrame) -> RowSplit:
    """Run the hop's row-level expectations; failing rows carry the names they broke."""
    spec = load_suite(hop)
    key = spec.key
    if frame.empty or not spec.rows:
        empty = frame.iloc[0:0].assign(reasons=pd.Series(dtype=object))
        checks = [
            {
                "name": s.name,
                "expectation": s.expect,
                "level": "row",
                "success": True,
                "unexpected": 0,
            }
            for s in spec.rows
        ]
        return RowSplit(frame, empty, checks)
    if frame[key].duplicated().any():
        raise ValueError(f"gate '{hop}': key column {key!r} is not unique within the batch")
    validation = _validate(
        hop, "rows", frame[[key, *[c for c in _columns(spec.rows) if c != key]]], key
    )
    reasons: dict[Any, list[str]] = {}
    checks = []
    by_name = {s.name: s for s in spec.rows}
    indexed = frame.set_index(key)
    for result in validation.results:
        name = result.expectation_config.meta["name"]
        failing = _failing_keys(result, key) if not result.success else []
        checks.append(
            {
                "name": name,
                "expectation": by_name[name].expect,
                "level": "row",
                "success": bool(result.success),
                "unexpected": len(failing),
            }
        )
        detail_column = by_name[name].detail_column
        details = indexed[detail_column] if failing and detail_column else None
        for row_key in failing:
            text = name
            if details is not None:
                detail = details.get(row_key)
                if isinstance(detail, str) and detail:
                    text = f"{name}: {detail}"
            reasons.setdefault(row_key, []).append(text)
    bad = frame[key].isin(list(reasons))
    quarantined = frame[bad].copy()
    quarantined["reasons"] = [reasons[k] for k in quarantined[key]]
    # Keep only a redacted result (no row values): small to hold, pickle and publish.
    return RowSplit(frame[~bad], quarantined, checks, _redacted(validation))


def check_batch(
    hop: str,
    produced: pd.DataFrame,
    *,
    batch_ref: str,
    received: int,
    quarantined: int,
    row_checks: list[dict[str, Any]] | None = None,
    max_quarantine_rate: float | None = None,
    row_validation: Any = None,
) -> GateResult:
    """Run the batch-level expectations over what the hop produced, plus the quarantine limit."""
    spec = load_suite(hop)
    limit = (
        get_settings().max_quarantine_rate if max_quarantine_rate is None else max_quarantine_rate
    )
    checks = list(row_checks or [])
    validations = [v for v in (row_validation,) if v is not None]
    if spec.batch:
        validation = _validate(hop, "batch", produced[_columns(spec.batch)], None)
        validations.append(_redacted(validation))
        by_name = {s.name: s for s in spec.batch}
        for result in validation.results:
            name = result.expectation_config.meta["name"]
            checks.append(
                {
                    "name": name,
                    "expectation": by_name[name].expect,
                    "level": "batch",
                    "success": bool(result.success),
                    "unexpected": int(result.result.get("unexpected_count") or 0),
                    "observed": _jsonable(result.result.get("observed_value")),
                }
            )
    rate = quarantined / received if received else 0.0
    checks.append(
        {
            "name": "quarantine_rate_within_limit",
            "expectation": "leadflow.max_quarantine_rate",
            "level": "batch",
            "success": rate <= limit,
            "unexpected": quarantined,
            "observed": round(rate, 6),
            "limit": limit,
        }
    )
    success = all(c["success"] for c in checks if c["level"] == "batch")
    return GateResult(
        hop=hop,
        suite=spec.suite,
        batch_ref=batch_ref,
        success=success,
        evaluated=received,
        passed=received - quarantined,
        quarantined=quarantined,
        checks=checks,
        validations=validations,
    )


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def record(conn: Connection, result: GateResult, *, flow_run_id: str | None, at: datetime) -> None:
    """Store the evaluation in ``dq_results`` (same transaction as the hop's writes)."""
    conn.execute(
        t.dq_results.insert().values(
            hop=result.hop,
            suite=result.suite,
            batch_ref=result.batch_ref,
            success=result.success,
            evaluated=result.evaluated,
            passed=result.passed,
            quarantined=result.quarantined,
            checks=result.checks,
            flow_run_id=flow_run_id,
            created_at=at,
        )
    )


# --------------------------------------------------------------------------- Data Docs

_REDACT = ("unexpected_list", "partial_unexpected_list", "partial_unexpected_counts")


def _redacted(validation: Any) -> Any:
    """A copy of a GX result without row values (emails, phones) and with few row ids."""
    import copy

    clean = copy.deepcopy(validation)
    for result in clean.results:
        for name in _REDACT:
            result.result.pop(name, None)
        for name in ("unexpected_index_list", "partial_unexpected_index_list"):
            items = result.result.get(name)
            if items:
                result.result[name] = [
                    {
                        k: v
                        for k, v in item.items()
                        if k in (result.result.get("unexpected_index_column_names") or [])
                    }
                    if isinstance(item, dict)
                    else item
                    for item in items[:20]
                ]
        result.result.pop("unexpected_index_query", None)
    return clean


def publish_docs(results: list[GateResult]) -> Path | None:
    """Store redacted validation results and rebuild the Data Docs pages for them."""
    validations = [(r, v) for r in results for v in r.validations]
    if not validations:
        return None
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    root = str(get_settings().gx_dir)
    with _gx_lock, _across_processes(root):
        context = _context(root)
        identifiers = []
        for result, validation in validations:
            suite_id = ExpectationSuiteIdentifier(name=validation.suite_name)
            safe_ref = re.sub(r"[^A-Za-z0-9_.-]+", "-", result.batch_ref)
            run_id = RunIdentifier(run_name=safe_ref, run_time=store.utcnow())
            identifier = ValidationResultIdentifier(
                expectation_suite_identifier=suite_id,
                run_id=run_id,
                batch_identifier=f"{result.hop}-{safe_ref}",
            )
            context.validation_results_store.store_validation_results(
                suite_validation_result=validation,
                suite_validation_result_identifier=identifier,
                expectation_suite_identifier=suite_id,
            )
            identifiers.append(identifier)
        context.build_data_docs(site_names=["leadflow"], resource_identifiers=identifiers)
    return get_settings().data_docs_dir / "index.html"


def artifact_rows(results: list[GateResult]) -> list[dict[str, Any]]:
    """One row per batch for the Prefect table artifact."""
    rows = []
    for result in results:
        failed = [c["name"] for c in result.checks if not c["success"]]
        rows.append(
            {
                "hop": result.hop,
                "batch": result.batch_ref,
                "passed gate": "yes" if result.success else "NO",
                "rows": result.evaluated,
                "quarantined": result.quarantined,
                "quarantine rate": f"{result.quarantine_rate:.2%}",
                "failed checks": ", ".join(failed) or "-",
            }
        )
    return rows
