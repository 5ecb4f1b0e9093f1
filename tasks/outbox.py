"""The outbox concern's Prefect layer: its tasks, events and artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.notifier import NOTIFIERS, MaildirNotifier, SmtpNotifier, WebhookNotifier
from leadflow import store
from leadflow.outbox import store as outbox
from leadflow.outbox.sender import send_due


def resolve_notifiers(spec: Any) -> list[SmtpNotifier | WebhookNotifier | MaildirNotifier]:
    """Notifiers from a block instance, ``block:NAME``, ``maildir:PATH``, or a list or
    comma-separated mix of those."""
    from blocks import resolve

    if spec is None:
        return []
    if isinstance(spec, NOTIFIERS):
        return [spec]
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    out: list[SmtpNotifier | WebhookNotifier | MaildirNotifier] = []
    for item in spec:
        if isinstance(item, NOTIFIERS):
            out.append(item)
            continue
        if item.startswith("maildir:"):  # no credentials involved: a local folder
            out.append(MaildirNotifier(directory=item[len("maildir:") :]))
            continue
        name = resolve.block_name(item)
        if name is None:
            raise ValueError(f"a notifier is block:NAME or maildir:PATH, got {item!r}")
        out.append(resolve.load(name, NOTIFIERS, "notifier"))
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
        engine, resolve_notifiers(notifier_spec), limit, now or store.utcnow(), first=first
    )
    return report.as_dict()
