"""The reps' CalDAV calendars as a Prefect block: ``leadflow-caldav`` (type ``Leadflow CalDAV
Calendars``).

One CalDAV server, one login and each rep's calendar: the booking page reads the rep's busy
times from it and the outbox sender (channel ``caldav``) writes booked meetings to it, so the
block is also a notifier (``channel``: ``caldav``; ``--notifier block:NAME`` takes it). The
password is a ``SecretStr``: never in ``repr``, logs or the Prefect UI. ``calendar_config``
finds the config a process uses: ``LEADFLOW_CALDAV_*`` variables, else the saved block.
"""

from __future__ import annotations

import os
from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from leadflow.calendars import CalendarConfig, calendar_problem, config_from_env

CALDAV_BLOCK = "leadflow-caldav"


class CalDavCalendars(Block):
    """A CalDAV server (Radicale, Nextcloud, Baikal, iCloud, ...) and each rep's calendar on
    it: ``calendars`` maps a rep code to the calendar's URL, absolute or a path resolved
    against ``url`` (``/ann/work/``: from the host's root; ``ann/work/``: below ``url``)."""

    _block_type_name: ClassVar[str] = "Leadflow CalDAV Calendars"
    _description: ClassVar[str] = (
        "The CalDAV calendars leadflow reads reps' busy times from and writes booked meetings to."
    )

    url: str = Field(pattern=r"^https?://")
    username: str | None = None
    password: SecretStr | None = None
    calendars: dict[str, str] = Field(default_factory=dict)  # rep code -> calendar URL
    timeout_seconds: float = Field(default=5.0, gt=0)
    cache_seconds: float = Field(default=60.0, ge=0)  # busy times kept this long; 0: never

    @field_validator("calendars")
    @classmethod
    def _calendar_urls(cls, calendars: dict[str, str]) -> dict[str, str]:
        for code, value in calendars.items():
            if problem := calendar_problem(code, value):
                raise ValueError(problem)
        return calendars

    def config(self) -> CalendarConfig:
        """What ``leadflow.calendars.Calendars`` takes (the password in clear)."""
        return CalendarConfig(
            url=self.url,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            calendars=dict(self.calendars),
            timeout_seconds=self.timeout_seconds,
            cache_seconds=self.cache_seconds,
        )

    @classmethod
    def from_config(cls, config: CalendarConfig) -> CalDavCalendars:
        """An unsaved block holding ``config`` (the config from the environment, handed to
        the outbox sender like a saved block)."""
        return cls(
            url=config.url,
            username=config.username,
            password=config.password,
            calendars=dict(config.calendars),
            timeout_seconds=config.timeout_seconds,
            cache_seconds=config.cache_seconds,
        )

    @property
    def channel(self) -> str:
        return "caldav"


def calendar_block(name: str | None = None) -> CalDavCalendars | None:
    """The CalDAV calendars this process uses, as a block: the saved block ``name`` when
    given; else, when ``LEADFLOW_CALDAV_URL`` is set, the ``LEADFLOW_CALDAV_*`` variables (an
    unsaved block); else, when a Prefect server is configured, the saved block
    ``LEADFLOW_CALDAV_BLOCK`` names (default ``leadflow-caldav``); else None (no CalDAV: the
    booking page offers times from leadflow's own meetings only).

    A block named by ``name`` or ``LEADFLOW_CALDAV_BLOCK`` that is not saved raises
    ``MissingBlock``; the default name not saved is None (CalDAV is optional)."""
    from blocks import resolve
    from leadflow.settings import configured_prefect_api

    what = "CalDAV calendars"
    if name:
        return resolve.load(name, (CalDavCalendars,), what)
    config = config_from_env()
    if config is not None:
        return CalDavCalendars.from_config(config)
    named = os.environ.get("LEADFLOW_CALDAV_BLOCK") or None
    if not named and not configured_prefect_api():
        return None
    try:
        return resolve.load(named or CALDAV_BLOCK, (CalDavCalendars,), what)
    except resolve.MissingBlock:
        if named:
            raise
        return None


def calendar_config(name: str | None = None) -> CalendarConfig | None:
    """The ``CalendarConfig`` of ``calendar_block(name)``, or None when there is none."""
    block = calendar_block(name)
    return block.config() if block is not None else None
