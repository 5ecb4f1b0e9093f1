"""A real Prefect server and leadflow's processes on loopback, for the end-to-end test and
the speed-to-lead benchmark: ``prefect server start`` on a free port with its own
PREFECT_HOME, and child processes (workers, ``leadflow serve``, ``leadflow lane``) whose
output goes to log files, all stopped (and their process groups killed) on exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    url: str,
    timeout: float,
    what: str,
    log: Path | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``url`` until it answers 200, or raise naming ``what`` (and its log's tail).

    With ``process``: stop early if it exits, and on a timeout ask it for its stacks first
    (SIGUSR1: leadflow commands dump every thread's stack), so the error says where it waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            what = f"{what} (exited with {process.returncode})"
            break
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    else:
        if process is not None and process.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGUSR1)
            time.sleep(1)
    tail = log.read_text(errors="replace")[-6000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} did not answer at {url} within {timeout:.0f} s\n{tail}")


class Stack:
    """Processes started for one run, with a shared environment."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: Sequence[str], cwd: Path | None = None) -> Path:
        log = self.folder / f"{name}.log"
        process = subprocess.Popen(
            list(argv),
            env=self.env,
            cwd=cwd or self.folder,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() kills its children too
        )
        self.children.append((name, process))
        return log

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for label, p in reversed(self.children) if label == name)

    def stop(self, name: str | None = None) -> None:
        for label, process in reversed(list(self.children)):  # servers last
            if name is not None and label != name:
                continue
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            self.children.remove((label, process))

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


def bin_path(name: str) -> str:
    """A console script installed beside this Python (prefect, leadflow)."""
    return str(Path(sys.executable).with_name(name))


@contextmanager
def prefect_server(folder: Path, env: dict[str, str] | None = None) -> Iterator[Stack]:
    """``prefect server start`` on a free loopback port; yields a ``Stack`` whose env points
    every child at it (PREFECT_API_URL). Everything started on the stack stops on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(env or {})
    base.update(
        {
            "PREFECT_HOME": str(folder / "prefect-home"),
            "PREFECT_API_URL": api,
            "PREFECT_UI_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                f"sqlite+aiosqlite:///{folder / 'prefect-home' / 'prefect.db'}"
            ),
            "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
            "PYTHONUNBUFFERED": "1",
        }
    )
    stack = Stack(folder, base)
    log = stack.start(
        "prefect-server",
        [bin_path("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
    )
    try:
        wait_for(f"{api}/health", 120, "prefect server", log)
        yield stack
    finally:
        stack.stop()


class MailSink:
    """A real SMTP server on loopback (aiosmtpd, from the test extra) for tests and
    benchmarks: keeps every message it accepts, can answer slowly (``delay`` seconds per
    message, as a busy relay does), refuse every recipient with a temporary ``refuse`` reply
    (an outage), or take a message and hold its reply to DATA until ``release`` is set (to
    kill a sender there: the server has the message, the sender never heard so). Use as a context manager; ``notifier()`` gives the block that sends to it."""

    def __init__(self, delay: float = 0.0, port: int | None = None) -> None:
        import threading

        self.delay = delay
        self.port = port or free_port()
        self.refuse: str | None = None  # e.g. "451 4.3.0 try again later"
        self.hold = threading.Event()  # set: DATA waits for ``release``
        self.in_data = threading.Event()  # set once a held DATA has begun
        self.release = threading.Event()
        self.received: list[Any] = []  # email.message.Message, in arrival order
        self._controller: Any = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        import asyncio
        import email

        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.append(email.message_from_bytes(envelope.content))
        if self.hold.is_set():  # the server has the message; its reply waits
            self.in_data.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        return "250 Message accepted"

    def message_ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.received]

    def notifier(self, timeout: float = 20.0) -> Any:
        from blocks.notifier import SmtpNotifier

        return SmtpNotifier(
            host="127.0.0.1",
            port=self.port,
            from_address="leadflow@example.com",
            starttls=False,
            timeout_seconds=timeout,
        )

    def __enter__(self) -> MailSink:
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._controller.stop()
