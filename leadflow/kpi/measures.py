"""KPIs from the views in ``sql/views``: read them (one task), compute the figures (pure),
draw the charts, and write them as Prefect artifacts and text.

- funnel: leads that reached each stage, and stage-to-stage conversion;
- speed to lead: capture -> routed (leadflow's delay), routed -> accepted and routed ->
  first touch (the rep's), median and p90;
- SLA compliance by policy and rep: met in time, late, unmet, open, breached;
- source performance: lead -> MQL -> SQL -> won by source;
- recycling: leads sent back to nurture, by the status they stalled in, and the rate (of
  the leads that reached that status);
- waiting work: leads per status a person or a hop must act on, and the oldest;
- sales velocity: open opportunities x win rate x average deal value / cycle length;
- booking (``leadflow.kpi.booking``, from the tables): capture -> first booked meeting,
  booking rate per source and routing rule, no-shows per rep, cancellations.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Connection, text

from leadflow import store
from leadflow.kpi import booking

FUNNEL = ("captured", "enriched", "mql", "routed", "accepted", "qualified", "won")
VIEWS = (
    "kpi_stage_reached",
    "kpi_speed_to_lead",
    "kpi_source_performance",
    "kpi_recycling",
    "kpi_waiting",
    "kpi_deals",
    "kpi_sla_compliance",
    "kpi_first_touch",
)


# --------------------------------------------------------------------------- pure figures


def funnel(reached: pd.DataFrame) -> list[dict[str, Any]]:
    """Leads that reached each funnel stage, and the share of the previous stage's."""
    counts = dict(zip(reached["stage"], reached["reached"].astype(int), strict=True))
    rows, previous = [], None
    for stage in FUNNEL:
        count = int(counts.get(stage, 0))
        conversion = round(count / previous, 4) if previous else None
        rows.append({"stage": stage, "leads": count, "conversion_from_previous": conversion})
        previous = count
    return rows


def _seconds(later: pd.Series, earlier: pd.Series) -> pd.Series:
    return (pd.to_datetime(later, utc=True) - pd.to_datetime(earlier, utc=True)).dt.total_seconds()


_quantiles = booking.quantiles  # median and p90 of seconds, missing left out


def speed_to_lead(frame: pd.DataFrame, first_touch: pd.DataFrame | None = None) -> dict[str, Any]:
    """System delay (capture -> routed) apart from rep delay (routed -> accepted, routed ->
    first human touch), and the whole of it (capture -> first touch)."""
    out = {
        "capture_to_routed": _quantiles(_seconds(frame["routed_at"], frame["captured_at"])),
        "routed_to_accepted": _quantiles(_seconds(frame["accepted_at"], frame["routed_at"])),
    }
    if first_touch is not None:
        touched = frame.merge(first_touch, on="lead_id", how="left")
        # A touch logged before the lead was routed (a rep who already knew them) is not a
        # response to the routing: those leads are left out rather than counted as 0 s.
        to_touch = _seconds(touched["first_touch_at"], touched["routed_at"])
        out["routed_to_first_touch"] = _quantiles(to_touch.where(to_touch >= 0))
        whole = _seconds(touched["first_touch_at"], touched["captured_at"])
        out["capture_to_first_touch"] = _quantiles(whole.where(to_touch >= 0))
    return out


def sla_compliance(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Per policy and rep: timers, met in time / late, unmet, open, breached, and the share
    met in time of those decided (met or closed)."""
    rows = []
    for row in frame.sort_values(["policy", "rep"]).to_dict("records"):
        counts = {
            k: int(row[k] or 0)
            for k in ("timers", "met_on_time", "met_late", "closed_unmet", "still_open", "breached")
        }
        decided = counts["timers"] - counts["still_open"]
        minutes = row.get("mean_business_minutes")
        rows.append(
            {
                "policy": row["policy"],
                "rep": row["rep"],
                **counts,
                "compliance": round(counts["met_on_time"] / decided, 4) if decided else None,
                "mean_business_minutes": None if pd.isna(minutes) else round(float(minutes), 1),
            }
        )
    return rows


def recycle_rates(recycling: pd.DataFrame, funnel_rows: list[dict[str, Any]]) -> list[dict]:
    """Leads recycled from each status, and their share of the leads that reached it."""
    reached = {row["stage"]: row["leads"] for row in funnel_rows}
    out = []
    for row in recycling.to_dict("records"):
        leads = int(row["leads"])
        base = reached.get(row["from_status"])
        out.append(
            {
                "from_status": row["from_status"],
                "recycled": int(row["recycled"]),
                "leads": leads,
                "rate": round(leads / base, 4) if base else None,
            }
        )
    return out


def source_performance(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.sort_values("leads", ascending=False).to_dict("records"):
        leads = int(row["leads"])
        out.append(
            {
                "source": row["source"],
                "leads": leads,
                "mql": int(row["mql"]),
                "sql": int(row["sql_qualified"]),
                "won": int(row["won"]),
                "lead_to_mql": round(int(row["mql"]) / leads, 4) if leads else None,
                "lead_to_won": round(int(row["won"]) / leads, 4) if leads else None,
            }
        )
    return out


def _budget(value: Any) -> float | None:
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, dict):
        return None
    try:
        return float(data.get("budget"))
    except (TypeError, ValueError):
        return None


def sales_velocity(deals: pd.DataFrame) -> dict[str, Any]:
    """Open opportunities x win rate x average won deal value / average cycle (days), per
    day. Deal value is ``attributes.budget`` where the source sent one."""
    won, lost = deals["status"] == "won", deals["status"] == "lost"
    closed = int(won.sum() + lost.sum())
    values = deals.loc[won, "attributes"].map(_budget).dropna()
    cycle = _seconds(deals.loc[won, "closed_at"], deals.loc[won, "captured_at"]).dropna() / 86400
    result = {
        "open_opportunities": int((deals["status"] == "qualified").sum()),
        "win_rate": round(float(won.sum()) / closed, 4) if closed else None,
        "average_deal_value": round(float(values.mean()), 2) if len(values) else None,
        "cycle_days": round(float(cycle.mean()), 1) if len(cycle) else None,
    }
    parts = [result[k] for k in ("win_rate", "average_deal_value", "cycle_days")]
    if None in parts or not result["cycle_days"]:
        result["velocity_per_day"] = None
    else:
        result["velocity_per_day"] = round(
            result["open_opportunities"] * parts[0] * parts[1] / parts[2], 2
        )
    return result


def figures(views: dict[str, pd.DataFrame], now: datetime) -> dict[str, Any]:
    """Every KPI from the views and the booking frames (``read_views``; pure)."""
    waiting = views["kpi_waiting"].copy()
    if len(waiting):
        oldest = pd.to_datetime(waiting["oldest_since"], utc=True)
        waiting["oldest_days"] = ((pd.Timestamp(now) - oldest).dt.total_seconds() / 86400).round(1)
    stages = funnel(views["kpi_stage_reached"])
    return {
        "as_of": now.isoformat(),
        "funnel": stages,
        "speed_to_lead": speed_to_lead(views["kpi_speed_to_lead"], views["kpi_first_touch"]),
        "sla_compliance": sla_compliance(views["kpi_sla_compliance"]),
        "source_performance": source_performance(views["kpi_source_performance"]),
        "recycling": recycle_rates(views["kpi_recycling"], stages),
        "waiting": waiting.drop(columns=["oldest_since"], errors="ignore").to_dict("records"),
        "sales_velocity": sales_velocity(views["kpi_deals"]),
        "booking": booking.figures(views),
    }


# --------------------------------------------------------------------------- charts, artifacts


def _first_touch_line(speed: dict[str, Any]) -> str:
    touch = speed.get("routed_to_first_touch")
    if not touch:
        return ""
    whole = speed["capture_to_first_touch"]
    return (
        f" Routed -> first touch (reps): median {_shown(touch['median_s'], ' s')}, p90 "
        f"{_shown(touch['p90_s'], ' s')} over {touch['leads']} leads; capture -> first touch: "
        f"median {_shown(whole['median_s'], ' s')}."
    )


def _percent(value: float | None) -> str:
    return "n/a" if _missing(value) else f"{value:.1%}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _shown(value: Any, unit: str = "") -> str:
    """A figure for a person: ``n/a`` where there is none (no leads, no closed deals)."""
    return "n/a" if _missing(value) else f"{value}{unit}"


def _velocity_line(velocity: dict[str, Any]) -> str:
    line = f"{velocity['open_opportunities']} open opportunities"
    if _missing(velocity["velocity_per_day"]):
        missing = [
            what
            for what, key in (
                ("no closed deals for a win rate", "win_rate"),
                ("no won deal with a budget", "average_deal_value"),
                ("no won deal's cycle", "cycle_days"),
            )
            if _missing(velocity[key]) or not velocity[key]
        ]
        return f"{line}; velocity n/a ({', '.join(missing) or 'no data'})."
    return (
        f"{line} x win rate {velocity['win_rate']} x average deal "
        f"{velocity['average_deal_value']} / {velocity['cycle_days']} days = "
        f"**{velocity['velocity_per_day']} per day**."
    )


def _duration(seconds: float | None) -> str:
    """Seconds for a person, in the unit that reads best (``n/a`` where there are none)."""
    if _missing(seconds):
        return "n/a"
    for limit, size, unit in ((120, 1, "s"), (7200, 60, "min"), (172800, 3600, "h")):
        if abs(seconds) < limit:
            return f"{seconds / size:.{0 if size == 1 else 1}f} {unit}"
    return f"{seconds / 86400:.1f} days"


def _speed_phrase(speed: dict[str, Any]) -> str:
    return (
        f"median {_duration(speed['median_s'])}, p90 {_duration(speed['p90_s'])} over "
        f"{speed['leads']} leads"
    )


def _rule_label(row: dict[str, Any]) -> str:
    """The routing rule, else the step that routed without one (``(fallback)``), else ``-``
    (the link was made while the lead had no open assignment)."""
    if row["rule"]:
        return str(row["rule"])
    return f"({row['step']})" if row["step"] else "-"


def booking_markdown(figures: dict[str, Any]) -> list[str]:
    """The report's "Booking" section: links -> meetings, speed to meeting, rates per source
    and rule, attendance per rep, cancellations (``n/a`` / ``-`` where a figure is None)."""
    rate, speed = figures["booking_rate"], figures["speed_to_meeting"]
    overall, shows = rate["overall"], figures["no_shows"]
    gone = figures["cancellations"]
    return [
        "## Booking",
        f"{overall['linked']} leads were sent a booking link; {overall['booked']} have a live "
        f"meeting ({_percent(overall['rate'])}), {overall['cancelled_only']} cancelled every "
        f"booking. Capture -> first booking: {_speed_phrase(speed['all'])} (still booked: "
        f"{_speed_phrase(speed['live'])}; since cancelled: {_speed_phrase(speed['cancelled'])}).",
        "",
        "| source | links | booked | rate |",
        "|---|---|---|---|",
        *[
            f"| {r['source'] or '-'} | {r['linked']} | {r['booked']} | {_percent(r['rate'])} |"
            for r in rate["by_source"]
        ],
        "",
        "| routing rule | links | booked | rate |",
        "|---|---|---|---|",
        *[
            f"| {_rule_label(r)} | {r['linked']} | {r['booked']} | {_percent(r['rate'])} |"
            for r in rate["by_rule"]
        ],
        "",
        "| rep | held | no-shows | no-show rate | cancelled |",
        "|---|---|---|---|---|",
        *[
            f"| {r['rep'] or '-'} | {r['held']} | {r['no_show']} | {_percent(r['no_show_rate'])} "
            f"| {r['cancelled']} |"
            for r in [*shows["by_rep"], {**shows["overall"], "rep": "all"}]
        ],
        "",
        f"Cancellations: {gone['meetings']} booked meetings cancelled ("
        f"{_percent(gone['of_booked'])} of {figures['meetings']['booked']}, {gone['leads']} "
        f"leads); {gone['activities']} meeting_cancelled activities in all.",
    ]


def markdown(report: dict[str, Any], charts: dict[str, str] | None = None) -> str:
    """The report as markdown (charts embedded when given)."""
    speed = report["speed_to_lead"]
    system, rep = speed["capture_to_routed"], speed["routed_to_accepted"]
    velocity = report["sales_velocity"]
    lines = [
        f"# leadflow KPIs as of {report['as_of']}",
        "",
        "## Funnel",
        "| stage | leads | from previous |",
        "|---|---|---|",
        *[
            f"| {r['stage']} | {r['leads']} | {_percent(r['conversion_from_previous'])} |"
            for r in report["funnel"]
        ],
        "",
        "## Speed to lead",
        f"Capture -> routed (leadflow): median {_shown(system['median_s'], ' s')}, p90 "
        f"{_shown(system['p90_s'], ' s')} over {system['leads']} leads. Routed -> accepted "
        f"(reps): median {_shown(rep['median_s'], ' s')}, p90 {_shown(rep['p90_s'], ' s')} "
        f"over {rep['leads']} leads." + _first_touch_line(speed),
        "",
        "## SLA compliance",
        "| policy | rep | timers | met in time | late | unmet | open | breached | compliance |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['policy']} | {r['rep'] or '-'} | {r['timers']} | {r['met_on_time']} | "
            f"{r['met_late']} | {r['closed_unmet']} | {r['still_open']} | {r['breached']} | "
            f"{_percent(r['compliance'])} |"
            for r in report["sla_compliance"]
        ],
        "",
        "## Recycling",
        "| from status | leads recycled | rate |",
        "|---|---|---|",
        *[
            f"| {r['from_status']} | {r['leads']} | {_percent(r.get('rate'))} |"
            for r in report["recycling"]
        ],
        "",
        "## Sources",
        "| source | leads | MQL | SQL | won | lead->MQL |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['source']} | {r['leads']} | {r['mql']} | {r['sql']} | {r['won']} | "
            f"{_percent(r['lead_to_mql'])} |"
            for r in report["source_performance"]
        ],
        "",
        "## Waiting work",
        "| status | leads | without owner | claimed | oldest (days) |",
        "|---|---|---|---|---|",
        *[
            f"| {r['status']} | {r['leads']} | {r['without_owner']} | {r['claimed']} | "
            f"{_shown(r.get('oldest_days'))} |"
            for r in report["waiting"]
        ],
        "",
        "## Sales velocity",
        _velocity_line(velocity),
    ]
    if report.get("booking"):
        lines += ["", *booking_markdown(report["booking"])]
    if report.get("leakage"):
        from leadflow.kpi.leakage import markdown as leakage_markdown

        lines += ["", leakage_markdown(report["leakage"])]
    for name, path in (charts or {}).items():
        encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        lines += ["", f"![{name}](data:image/png;base64,{encoded})"]
    return "\n".join(lines)


def charts(report: dict[str, Any], speed: pd.DataFrame, folder: Path) -> dict[str, str]:
    """PNG charts: the funnel, and the distribution of capture -> routed seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"funnel": folder / "funnel.png", "speed_to_lead": folder / "speed_to_lead.png"}
    figure, axis = plt.subplots(figsize=(7, 3.4), dpi=110)
    stages = [row["stage"] for row in report["funnel"]]
    axis.barh(stages[::-1], [row["leads"] for row in report["funnel"]][::-1], color="#2f6f9f")
    axis.set_xlabel("leads that reached the stage")
    figure.tight_layout()
    figure.savefig(paths["funnel"])
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(7, 3.4), dpi=110)
    seconds = _seconds(speed["routed_at"], speed["captured_at"]).dropna()
    axis.hist(seconds, bins=30, color="#c0504d")
    axis.set_xlabel("seconds from capture to routed")
    axis.set_ylabel("leads")
    figure.tight_layout()
    figure.savefig(paths["speed_to_lead"])
    plt.close(figure)
    return {name: str(path) for name, path in paths.items()}


def read_views(conn: Connection) -> dict[str, pd.DataFrame]:
    """Every KPI view (``sql/views``) as a DataFrame, and the booking KPIs' frames
    (``leadflow.kpi.booking.FRAMES``, read from the tables)."""
    views = {name: store.read_frame(conn, text(f"SELECT * FROM {name}")) for name in VIEWS}
    return views | booking.read_frames(conn)
