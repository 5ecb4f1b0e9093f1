"""Rules checked before anything moves.

A run that uses several rules files loads every one of them first, with the loaders its hops
use (nothing here validates on its own), so a typo in the last hop's file stops the run
before the first hop moves a lead. A problem is one line naming the file, the field and the
bad value: a ``ConfigError`` for the command line (exit 2), a Failed state carrying that line
for a flow run (a deployment), with no traceback.

Which files each run uses:

* ``pipeline`` (``leadflow run``): enrichment (and its lists), scoring, routing (and the reps
  file of ``LEADFLOW_REPS_FILE``), each hop's gate suite;
* ``demo``: the pipeline's, then the SLA policies, the cadences (templates, suppression
  list) and the recycling policy its sales week and month use;
* every other flow in ``flows/`` (as deployed) loads its own file(s) first through
  ``loaded`` (or checks them with ``refusal``) and uses what it loaded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from leadflow.config import ConfigError

if TYPE_CHECKING:
    from prefect.states import State

Loaded = TypeVar("Loaded")

_HEADER = re.compile(r"(?P<origin>.+): \d+ problem\(s\)")


def one_line(message: str) -> str:
    """A config error's message on one line: ``FILE: N problem(s)`` followed by one
    ``FILE: field: problem (value: ...)`` line each becomes ``FILE: field: ...; field: ...``."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message.strip()
    head = _HEADER.fullmatch(lines[0])
    if head is None:
        return "; ".join(lines)
    origin = head["origin"] + ": "
    return origin + "; ".join(line.removeprefix(origin) for line in lines[1:])


def _one_line_errors(check: Callable[..., object]) -> Callable[..., None]:
    """``check`` raising its ``ConfigError`` as one line."""

    @functools.wraps(check)
    def checked(*args: Any, **kwargs: Any) -> None:
        try:
            check(*args, **kwargs)
        except ConfigError as exc:
            raise ConfigError(one_line(str(exc))) from exc

    return checked


def loaded(
    load: Callable[..., Loaded], *args: Any, **kwargs: Any
) -> tuple[Loaded, None] | tuple[None, State]:
    """(``load(*args, **kwargs)``, None), or (None, the Failed state a flow returns before
    it moves anything) when the rules are bad: its message is the one line
    (``ConfigError: FILE: field: ...``, which the command line reads as bad config, exit 2),
    and no traceback is logged. For a flow that uses what it checked (loaded once)."""
    from prefect.states import Failed

    try:
        return load(*args, **kwargs), None
    except ConfigError as exc:
        return None, Failed(message=f"ConfigError: {one_line(str(exc))}")


def refusal(check: Callable[..., object], *args: Any, **kwargs: Any) -> State | None:
    """None if ``check(*args, **kwargs)`` passes, else the Failed state of ``loaded``."""
    return loaded(check, *args, **kwargs)[1]


# --------------------------------------------------------------------------- one file each


@_one_line_errors
def enrichment(rules_path: str | None = None) -> None:
    """``rules/enrichment.yaml`` (or ``rules_path``) and the lists in ``rules/lists``."""
    from leadflow.enrich.hop import load_lists
    from leadflow.enrich.rules import load_enrichment_rules

    load_enrichment_rules(rules_path)
    try:
        load_lists()
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: {exc.strerror}") from exc


@_one_line_errors
def scoring(spec: str | None = None) -> None:
    """Scoring rules: a path or block:NAME (default ``rules/scoring.yaml``)."""
    from leadflow.scoring.decide import rule_source

    rule_source(spec)


@_one_line_errors
def routing(spec: str | None = None, reps: str | None = None) -> None:
    """Routing rules (default ``rules/routing.yaml``) with the reps CSV replacing theirs
    (``reps``, default $LEADFLOW_REPS_FILE)."""
    from tasks.routing import load_context

    load_context.fn(spec, reps)


@_one_line_errors
def sla(spec: str | None = None, routing: str | None = None, reps: str | None = None) -> None:
    """SLA policies (default ``rules/sla.yaml``) and the routing rules they reassign with."""
    from tasks.sla import load_context

    load_context.fn(spec, routing, reps)


@_one_line_errors
def cadences(spec: str | None = None) -> None:
    """Cadences (default ``rules/cadences.yaml``), their templates and suppression list."""
    from leadflow.nurture.plan import load_context

    load_context(spec)


@_one_line_errors
def recycle(spec: str | None = None) -> None:
    """The recycling policy (default ``rules/recycle.yaml``), the scoring bands and the
    cadences it recycles into."""
    from leadflow.recycle.hop import load_context

    load_context(spec)


@_one_line_errors
def capture(mapping_path: str | None = None, target: str | None = None) -> None:
    """A capture's mapping; for activities, the SLA rules that say what a reject does."""
    from leadflow.capture.activities import reject_policy
    from leadflow.capture.rules import load_mapping

    mapping, _ = load_mapping(mapping_path)
    if (target or mapping.target) == "activities":
        reject_policy()


@_one_line_errors
def suites(*hop_names: str) -> None:
    """The gate suites (``suites/<hop>.yaml``) of the hops that will run."""
    from leadflow import quality

    for name in hop_names:
        quality.load_suite(name)


@_one_line_errors
def crm() -> None:
    """The CRM mappings (``rules/crm/*.yaml``): every decision reads them to know which CRMs
    hear of it, so a broken one must stop a run before anything moves."""
    from leadflow.crm.mapping import enabled

    enabled()


# --------------------------------------------------------------------------- whole runs


def pipeline() -> None:
    """Every file the pipeline's hops will load (``leadflow run``, the pipeline flow)."""
    from leadflow import order

    enrichment()
    scoring()
    routing()
    crm()
    suites(*dict.fromkeys(hop.suite for hop in order.PIPELINE))


def demo() -> None:
    """Every file the demo will load: the pipeline's, then its sales week's (SLA checks;
    the activities capture reads the SLA rules too) and its month's (nurture, recycling)."""
    pipeline()
    sla()
    cadences()
    recycle()
