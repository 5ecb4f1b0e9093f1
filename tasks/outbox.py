"""The outbox concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.calendar import CalDavCalendars, calendar_block
from blocks.notifier import NOTIFIERS, MaildirNotifier
from leadflow import store
from leadflow.outbox import store as outbox
from leadflow.outbox.sender import Notifier, send_due

log = logging.getLogger(__name__)
# Every block a notifier spec may name: the senders of messages, and the reps' calendars
# (channel caldav: booked meetings written to them).
NOTIFIER_BLOCKS = (*NOTIFIERS, CalDavCalendars)


def resolve_notifiers(spec: Any) -> list[Notifier]:
    """Notifiers from a block instance, ``block:NAME`` (an SMTP, webhook or Maildir notifier,
    or CalDAV calendars), ``maildir:PATH``, or a list or comma-separated mix of those."""
    from blocks import resolve

    if spec is None:
        return []
    if isinstance(spec, NOTIFIER_BLOCKS):
        return [spec]
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    out: list[Notifier] = []
    for item in spec:
        if isinstance(item, NOTIFIER_BLOCKS):
            out.append(item)
            continue
        if item.startswith("maildir:"):  # no credentials involved: a local folder
            out.append(MaildirNotifier(directory=item[len("maildir:") :]))
            continue
        name = resolve.block_name(item)
        if name is None:
            raise ValueError(f"a notifier is block:NAME or maildir:PATH, got {item!r}")
        out.append(resolve.load(name, NOTIFIER_BLOCKS, "notifier"))
    return out


def with_calendars(notifiers: Sequence[Notifier]) -> list[Notifier]:
    """``notifiers`` plus the reps' CalDAV calendars this process is configured for
    (``blocks.calendar.calendar_block``: the ``LEADFLOW_CALDAV_*`` variables as an unsaved
    block, else the saved ``leadflow-caldav`` block), unless one of them already serves the
    ``caldav`` channel or none is configured: booked meetings reach the reps' calendars
    without every caller naming the block."""
    out = list(notifiers)
    if any(notifier.channel == "caldav" for notifier in out):
        return out
    try:
        block = calendar_block()
    except Exception as exc:  # a named block missing, the API down: email still goes out
        log.error("CalDAV calendars not loaded; calendar events wait: %s", exc)
        return out
    if block is not None:
        out.append(block)
    return out


@task(name="send-outbox", cache_policy=NO_CACHE, task_run_name="send-outbox")
def send_outbox(
    database_url: str,
    notifier_spec: Any,
    limit: int = 500,
    now: datetime | None = None,
    first: Sequence[str] | None = outbox.URGENT,
) -> dict[str, Any]:
    """Send every due message of the ``first`` kinds (default: owner notices and SLA
    escalations), then up to ``limit`` more, urgent first (see ``leadflow.outbox.sender.send_due``);
    returns the counts, what is left in the outbox and masked errors."""
    engine = store.get_engine(database_url)
    report = send_due(
        engine,
        with_calendars(resolve_notifiers(notifier_spec)),
        limit,
        now or store.utcnow(),
        first=first,
    )
    sent = report.as_dict()
    announce_dead_letters(sent)
    return sent


def announce_dead_letters(report: dict[str, Any]) -> bool:
    """A send that left messages dead (``report``: ``SendReport.as_dict()``) emits the
    Prefect event ``leadflow.outbox.dead-letters`` (an automation tells ops): counts only,
    never an address or an error text. An unreachable API is logged, never raised."""
    from prefect.events import emit_event

    if not report.get("dead"):
        return False
    try:
        emit_event(
            event="leadflow.outbox.dead-letters",
            resource={"prefect.resource.id": "leadflow.outbox", "prefect.resource.name": "outbox"},
            payload={
                "dead": int(report["dead"]),
                "bounced": int(report.get("bounced") or 0),
                "dead_total": int((report.get("backlog") or {}).get("dead", report["dead"])),
            },
        )
    except Exception as exc:  # telling ops must not fail the send that was done
        log.warning("could not announce %s dead message(s): %s", report["dead"], exc)
        return False
    return True
