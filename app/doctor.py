"""``leadflow doctor``: a deployment checked end to end, one ``Finding`` per check.

The checks that need no Prefect are ``leadflow/doctor.py``'s; the Prefect side is here: the
API answers, every leadflow block is present and readable, the SMTP notifier blocks log in,
the ``leadflow`` work pool has a live worker, and the lane's task worker is subscribed.
Without a Prefect server (no ``PREFECT_API_URL``) those say "skipped (no Prefect server)".

How "alive" is decided:

- a work-pool worker is live while its last heartbeat is within three of its heartbeat
  intervals (the rule Prefect's own foreman uses before it marks a worker offline);
- the lane is alive while the server lists a task worker subscribed to this code's
  ``speed_to_lead`` task (``POST /task_workers/filter``: the server keeps that list from the
  open websocket subscriptions and drops a worker the moment its connection closes), so no
  heartbeat row of our own is needed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from leadflow import doctor as core
from leadflow.doctor import Finding, failed, ok, skipped
from leadflow.links import SITE_BLOCK

POOL = "leadflow"
NOTIFIER_BLOCKS = ("leadflow-smtp", "leadflow-webhook")
# Blocks a deployment cannot run without, and why (said in the fix when one is missing).
REQUIRED = {
    "leadflow": "the workers and the command line find the database through it",
    "leadflow-capture-token": "POST /leads refuses every lead without it",
    SITE_BLOCK: "emailed links need its public URL and signing secret on every host",
}
NO_SERVER = "no Prefect server: PREFECT_API_URL is not set"


def _client(timeout: float) -> Any:
    from prefect.client.orchestration import get_client

    return get_client(httpx_settings={"timeout": timeout}, sync_client=True)


def api(url: str, timeout: float) -> Finding:
    with _client(timeout) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        return failed(
            "prefect api",
            f"{url} does not answer ({type(problem).__name__})",
            "start it (`prefect server start`) or correct PREFECT_API_URL",
        )
    return ok("prefect api", f"{url}/health answered")


def blocks(timeout: float) -> list[Finding]:
    """One finding per block ``leadflow blocks init`` makes: present and loadable. A block
    never configured fails only if a deployment needs it: the database, the capture token,
    and a notifier (SMTP or webhook: one of the two)."""
    from prefect.blocks.core import Block
    from prefect.client.schemas.objects import BlockDocument

    from blocks.registry import PLANS

    with _client(timeout) as client:
        answer = client.request(
            "POST",
            "/block_documents/filter",
            json={"block_documents": {"name": {"any_": list(PLANS)}}, "include_secrets": False},
        )
        answer.raise_for_status()
    found = {d.name: d for d in BlockDocument.model_validate_list(answer.json())}
    has_notifier = any(name in found for name in NOTIFIER_BLOCKS)
    findings = []
    for name, (variable, _) in PLANS.items():
        check = f"block {name}"
        document = found.get(name)
        if document is None:
            findings.append(_not_configured(check, name, variable, has_notifier))
            continue
        kind = document.block_type.name if document.block_type else "block"
        slug = document.block_type.slug if document.block_type else ""
        try:
            Block.load(f"{slug}/{name}")
        except Exception as exc:
            findings.append(
                failed(
                    check,
                    f"{kind}, present but unreadable: {core.one_line(exc)}",
                    f"save it again: `{variable}=... leadflow blocks init --overwrite`",
                )
            )
            continue
        findings.append(ok(check, f"{kind}, readable"))
    return findings


def _not_configured(check: str, name: str, variable: str, has_notifier: bool) -> Finding:
    init = f"`{variable}=... leadflow blocks init`"
    if name in REQUIRED:
        return failed(check, "not configured", f"{init} ({REQUIRED[name]})")
    if name in NOTIFIER_BLOCKS and not has_notifier:
        return failed(
            check,
            "not configured, and neither is another notifier",
            f"{init} (without a notifier nobody is emailed: owners, escalations, nurture)",
        )
    return ok(check, f"not configured (optional; {variable} makes it)")


def smtp(timeout: float) -> list[Finding]:
    """Every SMTP notifier block the deployment sends through: ``leadflow-smtp`` and those
    ``LEADFLOW_NOTIFIER`` names. Connect, EHLO, STARTTLS/SSL, log in; no mail is sent."""
    from blocks import resolve
    from blocks.notifier import NOTIFIERS, SmtpNotifier

    names = [
        name
        for item in (os.environ.get("LEADFLOW_NOTIFIER") or "").split(",")
        if (name := resolve.block_name(item.strip()))
    ]
    names = list(dict.fromkeys([*names, "leadflow-smtp"]))
    findings = []
    for name in names:
        try:
            notifier = resolve.load(name, NOTIFIERS, "notifier")
        except resolve.MissingBlock as exc:
            if name == "leadflow-smtp":
                continue  # not configured: the blocks check says whether that matters
            findings.append(
                failed(f"notifier {name}", core.one_line(exc), "`leadflow blocks init`")
            )
            continue
        if isinstance(notifier, SmtpNotifier):
            findings.append(core.smtp(name, notifier, timeout))
    return findings or [skipped("smtp", "no SMTP notifier block")]


def worker(pool: str, timeout: float, now: datetime) -> Finding:
    from prefect.exceptions import ObjectNotFound

    check = f"worker {pool}"
    start = f"`prefect worker start --pool {pool}` (deployed runs wait in Scheduled until then)"
    with _client(timeout) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            return failed(
                check, f"no work pool {pool!r}", f"`prefect work-pool create {pool} --type process`"
            )
        workers = client.read_workers_for_work_pool(pool)
    ages = {
        w.name: (now - w.last_heartbeat_time).total_seconds()
        for w in workers
        if w.last_heartbeat_time is not None
    }
    live = [
        w.name
        for w in workers
        if w.name in ages and ages[w.name] <= 3 * (w.heartbeat_interval_seconds or 30)
    ]
    if live:
        return ok(check, f"{len(live)} live worker(s): {', '.join(sorted(live))}")
    if not ages:
        return failed(check, f"pool {pool!r} has no worker", start)
    newest = min(ages.values())
    return failed(check, f"no live worker (last heartbeat {newest:.0f} s ago)", start)


def lane(timeout: float) -> Finding:
    from tasks.lane import speed_to_lead

    key = speed_to_lead.task_key
    with _client(timeout) as client:
        answer = client.request("POST", "/task_workers/filter", json={})
        answer.raise_for_status()
    keys = [set(w.get("task_keys") or []) for w in answer.json()]
    serving = [k for k in keys if key in k]
    if serving:
        return ok("lane", f"{len(serving)} task worker(s) serve speed_to_lead")
    start = "start `leadflow lane` (PREFECT_API_URL set) from this version of leadflow"
    if any(k.split("-")[0] == "speed_to_lead" for ks in keys for k in ks):
        return failed("lane", "a lane serves another version of speed_to_lead, not this one", start)
    return failed(
        "lane",
        "no task worker serves speed_to_lead: posted leads wait for the next pipeline run",
        start,
    )


def rules() -> Finding:
    from leadflow.config import ConfigError
    from leadflow.settings import get_settings
    from tasks import rules_check

    try:
        folder = get_settings().rules_dir
    except ValueError as exc:  # the rules block LEADFLOW_RULES_BLOCK names is not there
        return failed(
            "rules",
            core.one_line(exc),
            "`LEADFLOW_RULES_DIR=/path/to/rules leadflow blocks init` creates the block; or "
            "unset LEADFLOW_RULES_BLOCK to use the rules the package ships",
        )
    try:
        rules_check.demo()  # every file the pipeline, SLA, nurture and recycling load
    except (ConfigError, ValueError, OSError) as exc:
        return failed("rules", core.one_line(exc), f"correct the file it names (in {folder})")
    return ok("rules", f"every rules file loads ({folder})")


def public_url(timeout: float) -> Finding:
    from leadflow.config import ConfigError
    from leadflow.nurture import unsubscribe

    try:
        base = unsubscribe.public_url()
    except ConfigError as exc:
        return failed("public url", core.one_line(exc), core.SET_PUBLIC_URL)
    return core.public_url(base, getattr(unsubscribe, "DEFAULT_PUBLIC_URL", None), timeout)


def automations(timeout: float) -> Finding:
    """leadflow's ops automations (app/automations.py) are all on the server, and they can
    notify someone (an ops notification block exists)."""
    from app.automations import PREFIX, desired

    with _client(timeout) as client:
        wanted, notes = desired(client)
        have = {a.name for a in client.read_automations() if a.name.startswith(PREFIX)}
    missing = [a.name.removeprefix(PREFIX) for a in wanted if a.name not in have]
    if missing:
        return failed(
            "automations",
            f"{len(missing)} of {len(wanted)} missing: {'; '.join(missing[:3])}"
            + ("; ..." if len(missing) > 3 else ""),
            "run `leadflow setup` again (or `leadflow automations apply`) after "
            "`prefect --no-prompt deploy --all`",
        )
    if any("notification" in note for note in notes):
        return failed(
            "automations",
            f"{len(wanted)} present, but nobody is told: {notes[-1]}",
            "set LEADFLOW_OPS_WEBHOOK_URL, run `leadflow blocks init`, then `leadflow setup`",
        )
    return ok("automations", f"{len(wanted)} present" + (f" ({'; '.join(notes)})" if notes else ""))


def crm(database_url: str | None) -> list[Finding]:
    """Each enabled CRM: its mapping loads, its credentials are there and work, every
    property the mapping writes exists there, every active rep is a user there; and how many
    of its sync messages are dead or waiting."""
    from sqlalchemy import func, select

    from blocks.crm import load_adapter
    from leadflow import store
    from leadflow import tables as t
    from leadflow.config import ConfigError
    from leadflow.crm import mapping as crm_mapping
    from leadflow.crm import store as crm_store
    from leadflow.crm.check import check

    try:
        targets = crm_mapping.enabled()
    except ConfigError as exc:
        return [failed("crm", core.one_line(exc), "correct the file or variable it names")]
    if not targets:
        return [ok("crm", "no CRM enabled (optional; rules/crm/*.yaml enabled:, LEADFLOW_CRM)")]
    emails: list[str] = []
    backlog: dict[tuple[str, str], int] = {}
    if database_url:
        with store.get_engine(database_url).connect() as conn:
            emails = crm_store.rep_emails(conn)
            rows = conn.execute(
                select(t.outbox.c.recipient, t.outbox.c.status, func.count())
                .where(t.outbox.c.kind == "crm_sync", t.outbox.c.status != "sent")
                .group_by(t.outbox.c.recipient, t.outbox.c.status)
            ).all()
            backlog = {(crm_, status): int(n) for crm_, status, n in rows}
    out: list[Finding] = []
    for mapping in targets:
        name = f"crm {mapping.crm}"
        try:
            adapter = load_adapter(mapping.crm, mapping.id_property)
        except Exception as exc:
            out.append(
                failed(name, core.one_line(exc), "`leadflow blocks init` with the CRM's variables")
            )
            continue
        for finding in check(adapter, mapping, emails):
            fix = {
                "reach": "renew the credentials in the block (`leadflow blocks init --overwrite`)",
                "properties": "create the property in the CRM, or correct the mapping file",
                "owners": "add the reps as CRM users, or map them under owners:",
            }[finding.what]
            out.append(ok(name, finding.line) if finding.ok else failed(name, finding.line, fix))
        dead = backlog.get((mapping.crm, "dead"), 0)
        if dead:
            out.append(
                failed(
                    name,
                    f"{dead} sync message(s) dead",
                    "`leadflow outbox list --status dead --kind crm_sync` shows why; fix, then "
                    "`leadflow outbox requeue-dead --kind crm_sync`",
                )
            )
    return out


def booking(database_url: str | None) -> list[Finding]:
    """The booking rules load; each rep with a CalDAV calendar is reachable there; reps who
    take meetings have working hours; how many calendar writes are dead."""
    from sqlalchemy import func, select

    from blocks.calendar import calendar_config
    from leadflow import store
    from leadflow import tables as t
    from leadflow.booking import rules as booking_rules
    from leadflow.calendars import Calendars, CalendarUnavailable
    from leadflow.config import ConfigError

    try:
        rules = booking_rules.current()
        config = calendar_config()
    except (ConfigError, ValueError) as exc:
        return [failed("booking", core.one_line(exc), "correct the file or variable it names")]
    if not rules.enabled:
        return [ok("booking", "booking page off (rules/booking.yaml enabled: false)")]
    out = [ok("booking", f"booking page on: {rules.meeting} meetings over {rules.days} days")]
    if config is None:
        out.append(
            ok(
                "booking calendars",
                "no CalDAV calendars (optional): slots from working "
                "hours and leadflow's own meetings",
            )
        )
    else:
        calendars = Calendars(config)
        for rep in sorted(config.calendars):
            try:
                out.append(ok("booking calendars", calendars.check(rep)))
            except CalendarUnavailable as exc:
                out.append(
                    failed(
                        "booking calendars",
                        core.one_line(exc),
                        "correct the calendar URL or credentials in the block",
                    )
                )
    if database_url:
        with store.get_engine(database_url).connect() as conn:
            dead = conn.execute(
                select(func.count())
                .select_from(t.outbox)
                .where(
                    t.outbox.c.kind.in_(("calendar_event", "meeting_invitation")),
                    t.outbox.c.status == "dead",
                )
            ).scalar_one()
        if dead:
            out.append(
                failed(
                    "booking",
                    f"{dead} booking message(s) dead",
                    "`leadflow outbox list --status dead` shows why",
                )
            )
    return out


def examine(timeout: float = 5.0, pool: str = POOL) -> list[Finding]:
    """Every check, in order; each within its deadline (``timeout`` seconds a request; a
    check making several, or reading the whole ledger, gets a few times that)."""
    from leadflow.settings import configured_prefect_api, get_settings

    findings: list[Finding] = []
    api_url = configured_prefect_api()
    if api_url is None:
        findings.append(skipped("prefect api", NO_SERVER))
    else:
        findings += core.guarded("prefect api", lambda: api(api_url, timeout), timeout * 2)
    api_up = api_url is not None and findings[-1].ok
    why_not = NO_SERVER if api_url is None else "the Prefect API does not answer"

    def prefect_side(check: str, work: Callable[[], Any], deadline: float) -> list[Finding]:
        return core.guarded(check, work, deadline) if api_up else [skipped(check, why_not)]

    try:
        settings = get_settings()
    except Exception as exc:
        settings = None
        findings.append(failed("database", core.one_line(exc), "the error names the setting"))
    else:
        findings += core.guarded(
            "database", lambda: core.database(settings, timeout, api_url), timeout * 2
        )
    database_ok = settings is not None and findings[-1].ok
    findings += prefect_side("blocks", lambda: blocks(timeout), timeout * 4)
    unread = "the settings could not be read: see database"
    findings += (
        core.guarded("rules", rules, timeout * 6) if settings else [skipped("rules", unread)]
    )
    findings += prefect_side("smtp", lambda: smtp(timeout), timeout * 4)
    findings += core.guarded("public url", lambda: public_url(timeout), timeout * 2)
    if settings is None:
        findings.append(skipped("drop folders", unread))
    else:
        findings += core.guarded("drop folders", lambda: core.drop_folders(settings), timeout)
    now = datetime.now(UTC)
    findings += prefect_side("worker", lambda: worker(pool, timeout, now), timeout * 2)
    findings += prefect_side("lane", lambda: lane(timeout), timeout * 4)
    findings += prefect_side("automations", lambda: automations(timeout), timeout * 4)
    crm_database = settings.database_url if settings is not None and database_ok else None
    findings += core.guarded("crm", lambda: crm(crm_database), timeout * 6)
    findings += core.guarded("booking", lambda: booking(crm_database), timeout * 6)
    if settings is None or not database_ok:
        return findings + [skipped(c, "the database check failed") for c in ("claims", "audit")]
    url = settings.database_url
    # Long dead: ten leases (at least ten minutes) without a run of that hop taking over.
    grace = timedelta(seconds=max(600, 10 * settings.claim_ttl_seconds))
    findings += core.guarded(
        "claims", lambda: core.dead_claims(url, timeout, grace, now), timeout * 2
    )
    findings += core.guarded("audit", lambda: core.audit(url, timeout * 6), timeout * 6 + 1)
    return findings
