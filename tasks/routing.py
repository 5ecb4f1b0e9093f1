"""The routing concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from leadflow.routing import hop as hop_impl
from leadflow.routing.hop import RouteContext
from leadflow.routing.rules import load_rules


@task(name="load-routing-rules", cache_policy=NO_CACHE)
def load_context(spec: str | None, reps_csv: str | None = None) -> RouteContext:
    """Routing rules from a path (default ``rules/routing.yaml``); with ``reps_csv`` (default
    $LEADFLOW_REPS_FILE) its reps replace the file's, checked against its pools again. The
    version hashes both texts. The booking rules are checked too (routing makes the links)."""
    import os

    from leadflow import config
    from leadflow.routing.rules import load_reps_csv, with_reps
    from leadflow.settings import get_settings

    rules, version, text = load_rules(spec or get_settings().rules_dir / "routing.yaml")
    reps_csv = reps_csv or os.environ.get("LEADFLOW_REPS_FILE")
    if reps_csv:
        reps_text = config.read_text(reps_csv)
        rules = with_reps(rules, load_reps_csv(reps_csv), str(reps_csv))
        text = text + "\n# reps: " + str(reps_csv) + "\n" + reps_text
        version = config.content_version(text)
    # Routing makes the booking links (rules/booking.yaml): a typo there stops the run here,
    # before a lead moves, not as routed leads without links.
    from leadflow.booking import invites
    from leadflow.booking import rules as booking_rules

    booking_rules.current()
    return RouteContext(rules, version, text, links=invites.with_links)


@task(name="route-dry-run", cache_policy=NO_CACHE)
def dry_run(
    database_url: str, context: RouteContext, since: datetime | None, now: datetime
) -> dict[str, Any]:
    """Replay routing for the MQLs of a period under ``context``'s rules and compare with the
    owners they have; writes nothing. The replay starts from even counters and no load (what
    the rules would do on their own), oldest first."""
    return hop_impl.dry_run(database_url, context, since, now)
