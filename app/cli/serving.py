"""`leadflow` commands: the speed-to-lead door: `serve` (POST /leads, unsubscribe, booking
pages) and the lane's worker."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from app.cli.common import (
    DATABASE,
    EXIT_OK,
    RULES,
    Command,
    fail,
)


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP endpoint: ``POST /leads`` (the speed-to-lead door) and unsubscribe links."""
    import logging

    import uvicorn

    from app.web import Capture, create_app
    from blocks import registry
    from leadflow import store
    from leadflow.settings import get_settings

    store.upgrade()
    token, missing = registry.capture_token(args.token_block)
    if token is None and args.token_block:
        return fail(missing)
    server = registry.api_url()
    lane = args.lane or ("worker" if server else "inline")
    capture = Capture(
        token=token,
        mapping_path=args.mapping or str(get_settings().rules_dir / "sources" / "web_form.yaml"),
        source=args.source,
        hand_off=_hand_off(lane),
        emit_events=bool(server),
        missing_token=missing,
    )
    app = create_app(capture=capture)  # a mapping with a typo stops here, before serving
    from leadflow.booking import rules as booking_rules

    booking = booking_rules.current()  # so does a booking.yaml with a typo
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(
        f"leadflow serve: http://{args.host}:{args.port} (POST /leads: "
        f"{'on' if token else 'off, ' + missing}; lane: {lane}; booking pages: "
        f"{'on' if booking.enabled else 'off'})",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def _serve_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--host", default="127.0.0.1")
    command.add_argument("--port", type=int, default=8080)
    command.add_argument(
        "--mapping",
        help="mapping YAML for posted fields (default sources/web_form.yaml in the rules folder)",
    )
    command.add_argument(
        "--source", help="source recorded on posted leads (default: the mapping's)"
    )
    command.add_argument(
        "--token-block",
        help="Secret block holding the capture token (default: block leadflow-capture-token "
        "when PREFECT_API_URL is set, else $LEADFLOW_CAPTURE_TOKEN)",
    )
    command.add_argument(
        "--lane",
        choices=["worker", "inline", "off"],
        help="captured leads go to the lane's task worker (default with PREFECT_API_URL), "
        "through the lane in this process (default without), or wait for the pipeline",
    )


def _hand_off(lane: str) -> Callable[[list[int]], Any] | None:
    """What ``serve`` does with each group of captured leads: queue a background task for
    the lane's task worker (``worker``), run the lane in this process (``inline``: no
    Prefect server needed), or nothing (``off``: the scheduled pipeline takes them)."""
    if lane == "off":
        return None
    if lane == "worker":
        from tasks.lane import speed_to_lead

        return lambda ids: speed_to_lead.delay(ids)
    from concurrent.futures import ThreadPoolExecutor

    from tasks.lane import hand, run_lane

    one_at_a_time = ThreadPoolExecutor(1, thread_name_prefix="lane")

    def run(ids: list[int]) -> None:
        try:
            summary = run_lane(ids, handed=True)
        except Exception as exc:  # the leads wait in their status for the pipeline
            print(f"lane: leads left to the pipeline: {type(exc).__name__}", file=sys.stderr)
            return
        if summary["leads"]:
            hops = ", ".join(
                f"{k} {v.get('claimed', 'failed')}" for k, v in summary["hops"].items()
            )
            print(
                f"lane: {summary['leads']} lead(s) in {summary['seconds']} s: {hops}",
                file=sys.stderr,
            )

    def hand_off(ids: list[int]) -> None:
        hand(ids)  # a run still queued behind another takes them with its own
        one_at_a_time.submit(run, ids)

    return hand_off


def cmd_lane(args: argparse.Namespace) -> int:
    """The lane's task worker: serves ``speed_to_lead`` background tasks until stopped."""
    from blocks import registry

    if not registry.api_url():
        return fail(
            "the lane's task worker needs a Prefect server: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api after `prefect server start`)"
        )
    from leadflow import store
    from tasks import lane

    store.upgrade()
    lane.serve(limit=args.limit)
    return EXIT_OK


def _lane_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--limit", type=int, default=4, help="lane task runs at once")


COMMANDS = (
    Command(
        "serve",
        cmd_serve,
        "HTTP endpoint: POST /leads (speed to lead), unsubscribe links, booking pages",
        _serve_arguments,
        DATABASE
        + RULES
        + ("LEADFLOW_CAPTURE_TOKEN", "LEADFLOW_NOTIFIER", "LEADFLOW_PUBLIC_URL", "PREFECT_API_URL"),
    ),
    Command(
        "lane",
        cmd_lane,
        "the speed-to-lead lane's task worker (needs a Prefect server)",
        _lane_arguments,
        DATABASE + RULES + ("LEADFLOW_NOTIFIER", "LEADFLOW_REPS_FILE", "PREFECT_API_URL"),
    ),
)
