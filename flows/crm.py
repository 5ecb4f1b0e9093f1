"""CRM sync flows: ``crm-sync`` sends leadflow's decisions to the CRMs (every minute, one at
a time), ``crm-pull`` reads back what people changed there (see ``leadflow/crm/``).

With no CRM enabled (``rules/crm/*.yaml`` ``enabled: false`` and ``LEADFLOW_CRM`` unset) both
are a Completed run saying so: a schedule left on is green, not red.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow
from prefect.states import Completed, Failed, State

from leadflow.settings import get_settings
from tasks import crm as crm_tasks
from tasks import hops as hop_tasks
from tasks import rules_check


def _targets(crm: str | None) -> tuple[list[str], State | None]:
    """The CRMs to work on, or the Failed state of a bad mapping: one line naming the file
    and the field (``ConfigError: FILE: field: ...``, bad config for the command line)."""
    mappings, refused = rules_check.loaded(crm_tasks.enabled, crm)
    if refused is None and mappings:
        refused = _credentials([m.crm for m in mappings])
    return [m.crm for m in mappings or []], refused


def _start(crm: str | None) -> tuple[list[str], State | None]:
    """The CRMs to work on, or the state a run ends in at once: Failed (a bad mapping,
    missing credentials), Completed (no CRM enabled: a schedule left on stays green)."""
    targets, refused = _targets(crm)
    if refused is None and not targets:
        refused = Completed(message="no CRM enabled (rules/crm/*.yaml, LEADFLOW_CRM)", data={})
    return targets, refused


def _credentials(crms: list[str]) -> State | None:
    """None when every CRM's credentials are there (block or variables), else the Failed
    state saying which to set, in one line, before any task runs (no traceback logged):
    ``MissingBlock: ...`` or ``ConfigError: ...``, bad config for the command line."""
    from blocks.crm import crm_block
    from blocks.resolve import MissingBlock

    for name in crms:
        try:
            crm_block(name)
        except MissingBlock as exc:
            return Failed(message=f"MissingBlock: {rules_check.one_line(str(exc))}")
        except ValueError as exc:  # a variable set wrong (pydantic's error is a ValueError)
            return Failed(
                message=f"ConfigError: {name} credentials: {rules_check.one_line(str(exc))}"
            )
    return None


@flow(name="crm-sync", flow_run_name=hop_tasks.run_name("crm-sync"))
def crm_sync(
    crm: str | None = None,
    now: datetime | None = None,
    database_url: str | None = None,
    limit: int | None = None,
) -> State:
    """Send every due ``crm_sync`` message of ``crm`` (default: every enabled CRM): each
    lead's latest values, upserted in the CRM's batches. Failed when a CRM refused the
    credentials, left dead letters, or could not be reached."""
    started = time.monotonic()
    targets, early = _start(crm)
    if early:
        return early
    database_url = database_url or get_settings().database_url
    now = now or datetime.now(UTC)
    reports = {
        name: crm_tasks.sync_crm(database_url, name, now=now, limit=limit) for name in targets
    }
    message = "; ".join(r["message"] for r in reports.values())
    data = {
        "crms": reports,
        "seconds": round(time.monotonic() - started, 3),
        # What was left for later, as every sender says it (exit 3 from the command line).
        "notifications": {
            key: sum(int(r.get(key) or 0) for r in reports.values())
            for key in ("failed", "deferred", "dead")
        },
    }
    if any(r["error"] or r["dead"] for r in reports.values()):
        return Failed(message=message, data=data)
    return Completed(message=message, data=data)


@flow(name="crm-pull", flow_run_name=hop_tasks.run_name("crm-pull"))
def crm_pull(
    crm: str | None = None,
    now: datetime | None = None,
    database_url: str | None = None,
) -> State:
    """Read status and owner changes people made in ``crm`` (default: every enabled CRM)
    since the last pull, as sales activities and reassignments."""
    started = time.monotonic()
    targets, early = _start(crm)
    if early:
        return early
    database_url = database_url or get_settings().database_url
    reports = {name: crm_tasks.pull_crm(database_url, name, now=now) for name in targets}
    message = "; ".join(r["message"] for r in reports.values())
    if any(r.get("error") for r in reports.values()):  # a CRM refused or was not reached
        return Failed(
            message=message,
            data={"crms": reports, "seconds": round(time.monotonic() - started, 3)},
        )
    return Completed(
        message=message, data={"crms": reports, "seconds": round(time.monotonic() - started, 3)}
    )
