"""leadflow's Prefect automations: ops are told, not only shown.

Defined here, in Python, rather than in a YAML file: four of them are generated per
deployment (from the schedules the server really has) and their message templates are
checked by Prefect's own models when this module builds them, so a typo fails
``leadflow automations apply``, not the first alert. ``create_automations`` makes the
server's automations named ``leadflow: ...`` exactly these (created, updated in place,
and removed when their deployment is gone); applying twice changes nothing.

==========================================  ==============================================
automation                                  fires when
==========================================  ==============================================
leadflow: run failed or crashed             a run of a leadflow deployment ends Failed,
                                            TimedOut or Crashed
leadflow: gate refused a batch              event ``leadflow.gate.refused`` (a hop's gate
                                            refused one or more batches of a run)
leadflow: outbox dead letters               event ``leadflow.outbox.dead-letters`` (a send
                                            left messages dead)
leadflow: lane runs crashed                 event ``leadflow.lane.runs-crashed`` (a lane
                                            worker found runs of a killed lane)
leadflow: no completed run of DEPLOYMENT    a scheduled deployment has had no Completed run
                                            in twice its schedule's period
leadflow: crash runs without heartbeats     a Running flow run sent no heartbeat for
                                            ``missed_heartbeats`` x the heartbeat period:
                                            its state becomes Crashed (which the first
                                            automation then reports)
==========================================  ==============================================

All but the last notify through a Prefect notification block, by default ``leadflow-ops``
(a Custom Webhook block ``leadflow blocks init`` makes from ``LEADFLOW_OPS_WEBHOOK_URL``;
any notification block, e.g. a Slack Webhook made in the UI, named by
``LEADFLOW_OPS_BLOCK``). Without one, only the heartbeat automation is applied, and the
result says so. Flow runs send heartbeats every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``
seconds (Prefect's default 180, at least 30): set it alike on the workers and where the
automations are applied, whose window is computed from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from blocks.ops import OPS_BLOCK

PREFIX = "leadflow: "
BLOCK_ENV = "LEADFLOW_OPS_BLOCK"
MISSED_HEARTBEATS = 3.0

FAILED = ("Failed", "TimedOut", "Crashed")
# A run that reached one of these (or sent a heartbeat) is not silent: its process is alive
# or is meant to be gone (a suspended run's process exits).
SETTLED = ("Completed*", "Failed", "TimedOut", "Cancelled", "Crashed", "Paused", "Suspended")

RUN_LINK = "{% set link = flow_run|ui_url %}{% if link %}\nOpen: {{ link }}{% endif %}"

FAILED_SUBJECT = (
    "leadflow: {{ deployment.name }} run {{ flow_run.name }} "
    "{{ event.resource['prefect.state-name'] }}"
)
FAILED_BODY = (
    "Deployment {{ flow.name }}/{{ deployment.name }}: run {{ flow_run.name }} ended "
    "{{ event.resource['prefect.state-name'] }} at {{ event.occurred }}.\n"
    "Message: {{ event.resource.get('prefect.state-message') or 'none' }}" + RUN_LINK
)
GATE_SUBJECT = "leadflow: the {{ event.resource['leadflow.hop'] }} gate refused a batch"
GATE_BODY = (
    "Gate {{ event.resource['leadflow.hop'] }} (suite {{ event.resource['leadflow.suite'] }}) "
    "refused {{ event.payload.refused }} batch(es): {{ event.payload.checks | join(', ') }}; "
    "{{ event.payload.quarantined }} of {{ event.payload.evaluated }} rows quarantined.\n"
    "{% if flow_run %}Run: {{ flow_run.name }}"
    "{% if deployment %} (deployment {{ flow.name }}/{{ deployment.name }}){% endif %}\n"
    "{% endif %}Records: leadflow quarantine list --hop {{ event.resource['leadflow.hop'] }}"
    + RUN_LINK
)
DEAD_SUBJECT = "leadflow: {{ event.payload.dead }} message(s) dead in the outbox"
DEAD_BODY = (
    "A send left {{ event.payload.dead }} message(s) dead "
    "({{ event.payload.bounced }} bounced); {{ event.payload.dead_total }} dead in the outbox "
    "now.{% if flow_run %} Run: {{ flow_run.name }}.{% endif %}\n"
    "See them: leadflow outbox list --status dead; "
    "send them again: leadflow outbox requeue-dead" + RUN_LINK
)
LANE_SUBJECT = "leadflow: {{ event.payload.crashed }} lane run(s) of a killed lane crashed"
LANE_BODY = (
    "Lane task runs left Running for over {{ event.payload.stale_seconds }} s (their lane "
    "worker was killed) were marked Crashed: {{ event.payload.names | join(', ') }}. Their "
    "leads wait in their status for the scheduled pipeline."
)


def _client(client_or_api: Any) -> tuple[Any, bool]:
    """(a sync Prefect client, whether it is ours to close)."""
    from prefect.client.orchestration import SyncPrefectClient, get_client

    if isinstance(client_or_api, SyncPrefectClient):
        return client_or_api, False
    if client_or_api is None:
        client = get_client(sync_client=True)
    elif isinstance(client_or_api, str):
        client = SyncPrefectClient(client_or_api)
    else:
        raise TypeError(f"a SyncPrefectClient or an API URL, got {type(client_or_api).__name__}")
    client.__enter__()
    return client, True


def flow_names() -> set[str]:
    """The names of leadflow's flows (every ``Flow`` in the ``flows`` package)."""
    import importlib
    import pkgutil

    from prefect import Flow

    import flows

    names: set[str] = set()
    for module in pkgutil.iter_modules(flows.__path__):
        loaded = importlib.import_module(f"flows.{module.name}")
        names |= {v.name for v in vars(loaded).values() if isinstance(v, Flow)}
    return names


def schedule_period(schedule: Any, now: datetime | None = None) -> timedelta | None:
    """The longest gap between a schedule's next runs (an interval's own length; a cron's or
    rrule's widest gap among its next 30 runs); None when it has fewer than two."""
    from prefect.server.schemas import schedules as server
    from prefect.utilities.asyncutils import run_coro_as_sync

    kinds = {
        "IntervalSchedule": server.IntervalSchedule,
        "CronSchedule": server.CronSchedule,
        "RRuleSchedule": server.RRuleSchedule,
    }
    kind = kinds.get(type(schedule).__name__)
    if kind is None:
        return None
    if kind is server.IntervalSchedule:
        return schedule.interval
    parsed = kind.model_validate(schedule.model_dump(exclude_none=True))
    dates = run_coro_as_sync(parsed.get_dates(n=30, start=now or datetime.now(UTC)))
    gaps = [later - earlier for earlier, later in pairwise(dates)]
    return max(gaps) if gaps else None


def _notify(block_id: Any, subject: str, body: str) -> Any:
    from prefect.events.actions import SendNotification

    return SendNotification(block_document_id=block_id, subject=subject, body=body)


def _event_automation(name: str, event: str, resource: str, subject: str, body: str, block: Any):
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    return AutomationCore(
        name=PREFIX + name,
        description=f"Notifies ops on every {event} event.",
        trigger=EventTrigger(
            expect={event}, match={"prefect.resource.id": resource}, posture="Reactive"
        ),
        actions=[_notify(block, subject, body)],
    )


def notifying(block_id: Any, names: Iterable[str]) -> list[Any]:
    """The automations that tell ops through the notification block ``block_id``."""
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    failed = AutomationCore(
        name=PREFIX + "run failed or crashed",
        description="A run of a leadflow deployment ended Failed, TimedOut or Crashed.",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in FAILED},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[
                {"prefect.resource.role": "flow", "prefect.resource.name": sorted(names)},
                {"prefect.resource.role": "deployment"},
            ],
            for_each={"prefect.resource.id"},
            posture="Reactive",
        ),
        actions=[_notify(block_id, FAILED_SUBJECT, FAILED_BODY)],
    )
    return [
        failed,
        _event_automation(
            "gate refused a batch",
            "leadflow.gate.refused",
            "leadflow.gate.*",
            GATE_SUBJECT,
            GATE_BODY,
            block_id,
        ),
        _event_automation(
            "outbox dead letters",
            "leadflow.outbox.dead-letters",
            "leadflow.outbox",
            DEAD_SUBJECT,
            DEAD_BODY,
            block_id,
        ),
        _event_automation(
            "lane runs crashed",
            "leadflow.lane.runs-crashed",
            "leadflow.lane",
            LANE_SUBJECT,
            LANE_BODY,
            block_id,
        ),
    ]


def _seconds(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} s"


def ui_base(client: Any) -> str:
    """The Prefect UI's address: PREFECT_UI_URL when set, else the client's API's (the same
    text whichever host applies the automations)."""
    explicit = os.environ.get("PREFECT_UI_URL")
    return (explicit or str(client.api_url).rstrip("/").removesuffix("/api")).rstrip("/")


def stale_schedule(
    deployment: Any, flow_name: str, period: timedelta, block_id: Any, ui: str
) -> Any:
    """No Completed run of ``deployment`` in twice its schedule's ``period``."""
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    window = 2 * period
    link = f"{ui}/deployments/deployment/{deployment.id}"
    where = f"{flow_name}/{deployment.name}"
    return AutomationCore(
        name=f"{PREFIX}no completed run of {deployment.name}",
        description=f"{where} runs every {_seconds(period)}; silent for twice that.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Completed*"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.id": f"prefect.deployment.{deployment.id}",
                "prefect.resource.role": "deployment",
            },
            posture="Proactive",
            threshold=1,
            within=window,
        ),
        actions=[
            _notify(
                block_id,
                f"leadflow: no completed {deployment.name} run in {_seconds(window)}",
                f"Deployment {where} is scheduled every {_seconds(period)} but no run of it "
                f"has completed in the last {_seconds(window)}: are its runs failing, late "
                "(no worker on pool "
                f"{deployment.work_pool_name or 'unknown'}), or is the schedule paused?"
                + f"\nOpen: {link}",
            )
        ],
    )


def heartbeats(heartbeat_seconds: int, missed: float = MISSED_HEARTBEATS) -> Any:
    """A Running flow run that sends no heartbeat (nor reaches a settled state) for
    ``missed`` heartbeat periods is Crashed: its process was killed (SIGKILL, OOM, a host
    gone) and nothing else would ever say so. The window starts at Running, so a run killed
    before its first heartbeat is caught too."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    window = timedelta(seconds=round(heartbeat_seconds * missed))
    return AutomationCore(
        name=PREFIX + "crash runs without heartbeats",
        description=(
            f"Flow runs send a heartbeat every {heartbeat_seconds} s "
            "(PREFECT_FLOWS_HEARTBEAT_FREQUENCY); silent for "
            f"{_seconds(window)}, a Running run's process is gone: mark it Crashed."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.Running", "prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in SETTLED)},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture="Proactive",
            threshold=1,
            within=window,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"no heartbeat for {_seconds(window)}: the run's process was killed or "
                    "its host is gone (marked by the leadflow heartbeat automation)"
                ),
            )
        ],
    )


def notification_block(client: Any, name: str) -> Any | None:
    """The id of the notification block document ``name`` (of any type), or None.
    Raises ValueError when ``name`` exists but cannot notify."""
    answer = client.request(
        "POST",
        "/block_documents/filter",
        json={"block_documents": {"name": {"any_": [name]}}, "include_secrets": False},
    )
    for document in answer.json():
        if "notify" not in (document.get("block_schema") or {}).get("capabilities", []):
            raise ValueError(f"the block {name!r} is not a notification block")
        return document["id"]
    return None


def scheduled(client: Any, names: set[str], block_id: Any) -> tuple[list[Any], list[str]]:
    """A stale-schedule automation per scheduled leadflow deployment (active schedule, not
    paused), and a line for each deployment skipped."""
    flow_of = {f.id: f.name for f in client.read_flows()}
    ui = ui_base(client)
    made, notes = [], []
    for deployment in client.read_deployments():
        flow_name = flow_of.get(deployment.flow_id)
        if flow_name not in names:
            continue
        active = [s.schedule for s in deployment.schedules or [] if s.active]
        if not active:
            continue
        if deployment.paused:
            notes.append(f"skipped no completed run of {deployment.name}: it is paused")
            continue
        periods = [p for p in (schedule_period(s) for s in active) if p is not None]
        if not periods:
            continue
        made.append(stale_schedule(deployment, flow_name, max(periods), block_id, ui))
    return made, notes


def desired(
    client: Any,
    block: str | None = None,
    heartbeat_seconds: int | None = None,
    missed_heartbeats: float = MISSED_HEARTBEATS,
) -> tuple[list[Any], list[str]]:
    """The automations leadflow wants on this server, and why any is missing."""
    from prefect.settings import get_current_settings

    block = block or os.environ.get(BLOCK_ENV) or OPS_BLOCK
    seconds = heartbeat_seconds or get_current_settings().flows.heartbeat_frequency
    wanted, notes = [], []
    if seconds:
        wanted.append(heartbeats(max(int(seconds), 30), missed_heartbeats))
    else:
        notes.append("skipped crash runs without heartbeats: flow run heartbeats are off")
    block_id = notification_block(client, block)
    if block_id is None:
        notes.append(
            f"skipped every notification: no notification block {block!r} (set "
            "LEADFLOW_OPS_WEBHOOK_URL and run `leadflow blocks init`, or name another "
            f"block in {BLOCK_ENV})"
        )
        return wanted, notes
    names = flow_names()
    wanted += notifying(block_id, names)
    stale, skipped = scheduled(client, names, block_id)
    return wanted + stale, notes + skipped


def _comparable(automation: Any) -> dict[str, Any]:
    from prefect.events.schemas.automations import AutomationCore

    core = AutomationCore.model_validate(automation.model_dump(exclude={"id"}))
    return _sorted(core.model_dump(mode="json", exclude={"owner_resource"}))


def _sorted(value: Any) -> Any:
    """``value`` with its lists of strings sorted (a trigger's sets dump in any order)."""
    if isinstance(value, dict):
        return {k: _sorted(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_sorted(v) for v in value]
        return sorted(items) if all(isinstance(v, str) for v in items) else items
    return value


def create_automations(
    client_or_api: Any = None,
    *,
    block: str | None = None,
    heartbeat_seconds: int | None = None,
    missed_heartbeats: float = MISSED_HEARTBEATS,
) -> list[str]:
    """Make the server's ``leadflow: ...`` automations exactly those of ``desired``: create
    the missing, update the changed in place, delete those no longer wanted (a deployment
    gone or unscheduled), keep the rest. ``client_or_api``: a ``SyncPrefectClient``, an API
    URL, or None for this process's PREFECT_API_URL. Returns one line per automation
    ("created NAME", "updated NAME", "kept NAME", "deleted NAME", "skipped ...")."""
    client, ours = _client(client_or_api)
    try:
        wanted, notes = desired(client, block, heartbeat_seconds, missed_heartbeats)
        existing: dict[str, list[Any]] = {}
        for automation in client.read_automations():
            if automation.name.startswith(PREFIX):
                existing.setdefault(automation.name, []).append(automation)
        lines = []
        for automation in wanted:
            found = existing.pop(automation.name, [])
            for duplicate in found[1:]:  # two of one name (made by hand): keep one
                client.delete_automation(duplicate.id)
            if not found:
                client.create_automation(automation)
                lines.append(f"created {automation.name}")
            elif _comparable(found[0]) != _comparable(automation):
                client.update_automation(found[0].id, automation)
                lines.append(f"updated {automation.name}")
            else:
                lines.append(f"kept {automation.name}")
        for name, stale in existing.items():
            for automation in stale:
                client.delete_automation(automation.id)
            lines.append(f"deleted {name}")
        return lines + notes
    finally:
        if ours:
            client.__exit__(None, None, None)


def list_automations(client_or_api: Any = None) -> list[dict[str, Any]]:
    """leadflow's automations on the server: name, enabled, trigger, actions, id."""
    client, ours = _client(client_or_api)
    try:
        return [
            {
                "name": a.name,
                "id": str(a.id),
                "enabled": a.enabled,
                "trigger": a.trigger.describe_for_cli().strip(),
                "actions": [action.type for action in a.actions],
            }
            for a in sorted(client.read_automations(), key=lambda a: a.name)
            if a.name.startswith(PREFIX)
        ]
    finally:
        if ours:
            client.__exit__(None, None, None)
