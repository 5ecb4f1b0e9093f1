"""A real Radicale CalDAV server on loopback, for the booking stage's calendar tests.

``Radicale`` runs ``python -m radicale`` (the pinned ``radicale`` in the venv) as a subprocess
on 127.0.0.1 and a free port, with its own temporary storage folder and config file: htpasswd
authentication from a plain-text users file (one user, ``leadflow``), Radicale's default
``owner_only`` rights (a user reaches only the collections under ``/<user>/``), logs at
``error``. ``down()`` stops the process and ``up()`` starts it again on the same port and
storage: a server that is down, then back. Calendars are made and read through the ``caldav``
client, as a rep's calendar app would.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import caldav
import icalendar
import requests

USER = "leadflow"
STARTUP_SECONDS = 30.0


def free_port() -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Radicale:
    """``with Radicale() as server: server.url``; or ``start()`` / ``stop()``."""

    def __init__(self, password: str = "s3cret-Pa55") -> None:
        self.username = USER
        self.password = password
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.folder = Path(tempfile.mkdtemp(prefix="leadflow-radicale-"))
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        users = self.folder / "users"
        users.write_text(f"{self.username}:{self.password}\n", encoding="utf-8")
        (self.folder / "collections").mkdir(exist_ok=True)
        config = f"""
[server]
hosts = 127.0.0.1:{self.port}
delay_on_error = 0.01

[auth]
type = htpasswd
htpasswd_filename = {users}
htpasswd_encryption = plain
delay = 0.01

[rights]
type = owner_only

[storage]
filesystem_folder = {self.folder / "collections"}

[logging]
level = error
"""
        (self.folder / "config").write_text(config, encoding="utf-8")

    # ------------------------------------------------------------------ the process

    def start(self) -> Radicale:
        """Start the server and wait until it answers HTTP (any status). Its log (errors
        only) goes to ``radicale.log`` in its folder, never to a pipe nobody reads."""
        if self._process is not None:
            return self
        with open(self.folder / "radicale.log", "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "radicale", "--config", str(self.folder / "config")],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                tail = (self.folder / "radicale.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"radicale exited at start: {tail.strip()}")
            try:
                requests.get(self.url, timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        self.down()
        raise RuntimeError(f"radicale did not answer on {self.url} in {STARTUP_SECONDS} s")

    def down(self) -> None:
        """Stop the process (storage and port kept: ``up()`` brings the same server back)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def up(self) -> Radicale:
        """Start the stopped server again, on the same port and storage."""
        return self.start()

    def stop(self) -> None:
        """Stop the server for good and remove its storage."""
        self.down()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Radicale:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ calendars

    def client(self) -> caldav.DAVClient:
        return caldav.DAVClient(self.url, username=self.username, password=self.password, timeout=5)

    def make_calendar(self, rep_code: str) -> str:
        """MKCALENDAR ``/<user>/<rep_code>/`` (the user's home collection first, as a calendar
        app's first login does); returns the calendar's absolute URL."""
        client = self.client()
        home = client.calendar(url=f"{self.url}{self.username}/")
        home.get_properties([caldav.elements.dav.DisplayName()])  # Radicale creates the home
        calendar = caldav.Calendar(client, parent=home, name=rep_code, id=rep_code).save()
        return str(calendar.url)

    def add_event(
        self,
        calendar_url: str,
        start: datetime | date,
        end: datetime | date,
        summary: str,
        transparent: bool = False,
        rrule: dict[str, Any] | str | None = None,
        **properties: Any,
    ) -> str:
        """Save one VEVENT (``rrule``: ``{"FREQ": "WEEKLY", "COUNT": 4}`` or its text form;
        ``properties``: more of them, e.g. ``status="CANCELLED"``); returns its UID."""
        uid = f"{uuid.uuid4()}@loopback"
        event = icalendar.Event()
        event.add("UID", uid)
        event.add("DTSTAMP", datetime.now(UTC))
        event.add("DTSTART", start)
        event.add("DTEND", end)
        event.add("SUMMARY", summary)
        event.add("TRANSP", "TRANSPARENT" if transparent else "OPAQUE")
        if rrule is not None:
            event.add(
                "RRULE", icalendar.vRecur.from_ical(rrule) if isinstance(rrule, str) else rrule
            )
        for name, value in properties.items():
            event.add(name.upper(), value)
        calendar = icalendar.Calendar()
        calendar.add("PRODID", "-//leadflow tests//radicale loopback//EN")
        calendar.add("VERSION", "2.0")
        calendar.add_component(event)
        self.client().calendar(url=calendar_url).save_event(calendar.to_ical().decode())
        return uid

    def events(self, calendar_url: str) -> list[tuple[str, Any, Any, str]]:
        """Every VEVENT stored in the calendar (not expanded): (uid, start, end, summary),
        sorted by start."""
        out = []
        for item in self.client().calendar(url=calendar_url).events():
            for component in item.icalendar_instance.walk("VEVENT"):
                out.append(
                    (
                        str(component["UID"]),
                        component.start,
                        component.end,
                        str(component.get("SUMMARY", "")),
                    )
                )
        return sorted(out, key=lambda row: (str(row[1]), row[0]))
