"""Progress bars on the command line (``rich``, on stderr): what long work has done so far.

The CLI opens a display around a flow (``shown``); the capture hop and the hop runner report
into it (``advance``) as chunks and batches are written. With no display open (a deployed
run, a test, ``--json`` piped somewhere) ``advance`` does nothing, so flows never depend on
it and stdout is never touched. Shown when stderr is a terminal, or ``LEADFLOW_PROGRESS=1``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_display: Any = None
_tasks: dict[str, Any] = {}
_lock = threading.Lock()


def wanted() -> bool:
    forced = os.environ.get("LEADFLOW_PROGRESS")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    return sys.stderr.isatty()


@contextmanager
def shown(enabled: bool | None = None) -> Iterator[None]:
    """A progress display on stderr for the duration of the block."""
    global _display
    if not (wanted() if enabled is None else enabled):
        yield
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    display = Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True, force_terminal=sys.stderr.isatty() or None),
        transient=False,
    )
    with display:
        _display = display
        _tasks.clear()
        try:
            yield
        finally:
            _display = None
            _tasks.clear()


def advance(what: str, amount: int, total: int | None = None) -> None:
    """Count ``amount`` more of ``what`` (e.g. "capture: records", "score: leads")."""
    display = _display
    if display is None:
        return
    with _lock:
        task = _tasks.get(what)
        if task is None:
            task = _tasks[what] = display.add_task(what, total=total)
        elif total is not None:
            display.update(task, total=total)
        display.advance(task, amount)
