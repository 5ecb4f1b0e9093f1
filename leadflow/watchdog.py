"""Processes end with the leadflow command that started them, even when it is SIGKILLed.

``leadflow`` may start a temporary Prefect API server and capture's prepare workers; if the
command is killed (SIGKILL, OOM), nothing in it runs to stop them. So the command first starts
this small watchdog, holding the read end of a pipe whose write end only the command holds:
when the command dies, the kernel closes the pipe, the watchdog reads EOF, and terminates every
process that inherited the command's marker in its environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARKER = "LEADFLOW_PROCESS_TREE"


def guard_children() -> None:
    """Start the watchdog for this process (Linux; a no-op elsewhere or when already set)."""
    if not Path("/proc/self/environ").exists() or os.environ.get(MARKER):
        return
    tree = uuid.uuid4().hex
    os.environ[MARKER] = tree  # every child started from now on inherits it
    read_end, write_end = os.pipe()  # both non-inheritable: children do not hold the pipe
    subprocess.Popen(
        [sys.executable, "-m", "leadflow.watchdog", tree],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in our process group: a Ctrl-C does not reach it first
    )
    os.close(read_end)
    _keep.append(write_end)  # held until this process ends, however it ends


_keep: list[int] = []


def members(tree: str) -> list[int]:
    """Processes started under ``tree`` (their initial environment carries it)."""
    wanted = f"{MARKER}={tree}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _terminate(tree: str, grace: float = 3.0) -> None:
    for pid in members(tree):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and members(tree):
        time.sleep(0.1)
    for pid in members(tree):
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.kill(pid, sig)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the command has ended, whatever ended it
    _terminate(sys.argv[1])
