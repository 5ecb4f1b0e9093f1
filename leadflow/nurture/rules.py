"""Nurture cadences: who enters, what they get and when, what ends it. See ``rules/cadences.yaml``.

A cadence has entry criteria (the shared condition language, with ``score``, ``temperature``,
``status`` and ``recycle_count`` as fields too), ordered steps (a delay after the previous
touch, a channel, a Jinja2 template), the events that end it early, whether a lead may enter
again, and what happens when its last step is sent (``on_finish``: another cadence, or
disqualified; there is no silent "exhausted" state). File-wide settings: quiet hours and
weekends in the lead's time zone, a frequency cap across all cadences, the suppression list,
and what an edit does to touches already planned (``on_change``).

Errors name the file, the cadence and the step. The version hashes the file and every
template it uses, so a template edit is a new version too.
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError
from pydantic import BaseModel, ConfigDict, Field, SkipValidation, field_validator, model_validator

from leadflow import config
from leadflow.rules.conditions import SCORED_FIELDS, Condition, routing_condition
from leadflow.rules.units import calendar_minutes, check_time_zone

# What a cadence may list under ``exit``: reasons a lead stops getting its touches.
EXITS = (
    "became_mql",  # the lead left nurture for sales (scored over the MQL threshold)
    "disqualified",
    "replied",  # a reply event after enrolment
    "meeting_booked",  # a meeting_booked event or activity after enrolment
    "unsubscribed",  # also suppresses the lead everywhere, cadence or not
    "bounced",  # likewise
)
# Exit reason -> the engagement event type that signals it (the rest are statuses).
EXIT_EVENTS = {
    "replied": "reply",
    "meeting_booked": "meeting_booked",
    "unsubscribed": "unsubscribe",
    "bounced": "bounce",
}
CHANNELS = ("email", "rep_task", "webhook")
CONDITION_FIELDS = SCORED_FIELDS | {"status", "recycle_count"}
_ID = r"^[a-z0-9][a-z0-9_.-]*$"
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Strict):
    name: str = Field(pattern=_ID)
    delay: str | float = "0d"  # after the previous touch (the first: after enrolment)
    channel: Literal["email", "rep_task", "webhook"] = "email"
    subject: str | None = None  # email and rep_task: a Jinja2 template string
    template: str  # a file under rules/templates/
    assignee: str | None = None  # rep_task: who gets the task (an email address)
    url: str | None = None  # webhook: where to post (default: the webhook notifier's URL)

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: str | float) -> str | float:
        calendar_minutes(value)
        return value

    @model_validator(mode="after")
    def _channel_needs(self) -> Step:
        if self.channel in ("email", "rep_task") and not self.subject:
            raise ValueError(f"a {self.channel} step needs a subject")
        if self.channel == "rep_task" and not (self.assignee and "@" in self.assignee):
            raise ValueError("a rep_task step needs an assignee (an email address)")
        return self

    @property
    def minutes(self) -> float:
        return calendar_minutes(self.delay)


class OnFinish(_Strict):
    then: Literal["cadence", "disqualify"]
    cadence: str | None = None

    @model_validator(mode="after")
    def _target(self) -> OnFinish:
        if self.then == "cadence" and not self.cadence:
            raise ValueError("then: cadence needs `cadence: <name>`")
        if self.then == "disqualify" and self.cadence:
            raise ValueError("then: disqualify takes no cadence")
        return self


class Cadence(_Strict):
    name: str = Field(pattern=_ID)
    description: str = ""
    # null: entered only from another cadence's on_finish or by recycling (long-term nurture)
    entry: SkipValidation[Condition | None] = None
    exit: tuple[str, ...] = EXITS
    reentry: Literal["never", "restart", "resume"] = "never"
    reentry_after: str | float = "30d"  # since the previous enrolment ended
    steps: tuple[Step, ...] = Field(min_length=1)
    on_finish: OnFinish

    @field_validator("entry", mode="before")
    @classmethod
    def _condition(cls, value: Any) -> Any:
        return None if value is None else routing_condition(value, CONDITION_FIELDS)

    @field_validator("exit")
    @classmethod
    def _exits(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(EXITS))
        if unknown:
            raise ValueError(f"unknown exit(s) {', '.join(unknown)}; known: {', '.join(EXITS)}")
        return value

    @field_validator("reentry_after")
    @classmethod
    def _after(cls, value: str | float) -> str | float:
        calendar_minutes(value)
        return value

    @model_validator(mode="after")
    def _steps_named_once(self) -> Cadence:
        names = [s.name for s in self.steps]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"step names repeated: {', '.join(repeated)}")
        return self

    @property
    def reentry_minutes(self) -> float:
        return calendar_minutes(self.reentry_after)


class QuietHours(_Strict):
    start: str = "19:00"  # local time touches stop
    end: str = "08:00"  # local time they may start again (may be before start: overnight)

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(str(value)):
            raise ValueError(f"{value!r}: write a time of day as HH:MM (24-hour)")
        return value

    def bounds(self) -> tuple[time, time]:
        return time.fromisoformat(self.start), time.fromisoformat(self.end)


class CadenceRules(_Strict):
    name: str = Field(pattern=_ID)
    description: str = ""
    default_timezone: str = "UTC"  # for leads enrichment found no time zone for
    quiet_hours: QuietHours | None = QuietHours()
    weekends: bool = False  # may touches go out on Saturday and Sunday (lead's time)?
    max_touches_per_week: int = Field(default=3, ge=1)  # rolling 7 days, all cadences
    suppression_list: str | None = "lists/suppression.txt"  # emails and domains; rules dir
    do_not_email_field: str = "attributes.do_not_email"  # truthy: never contacted
    on_change: Literal["keep", "replan"] = "keep"
    cadences: tuple[Cadence, ...] = Field(min_length=1)

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_time_zone(value)

    @model_validator(mode="after")
    def _check(self) -> CadenceRules:
        names = [c.name for c in self.cadences]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"cadence names repeated: {', '.join(repeated)}")
        for cadence in self.cadences:
            target = cadence.on_finish.cadence
            if target is not None and target not in names:
                raise ValueError(
                    f"cadence {cadence.name}: on_finish names unknown cadence {target!r}; "
                    f"known: {', '.join(names)}"
                )
            if target == cadence.name:
                raise ValueError(f"cadence {cadence.name}: on_finish cannot restart itself")
        return self

    def cadence(self, name: str) -> Cadence | None:
        return next((c for c in self.cadences if c.name == name), None)

    def fields(self) -> set[str]:
        """Lead fields the entry criteria read."""
        found: set[str] = set()
        for cadence in self.cadences:
            if cadence.entry is not None:
                found |= cadence.entry.fields()
        return found


class Templates:
    """The cadences' Jinja2 templates, compiled once, with ``StrictUndefined``: a touch whose
    template names a field the lead does not have fails with that name instead of going out
    half-rendered."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env = Environment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        self._compiled: dict[str, Any] = {}

    def file(self, name: str) -> Any:
        if name not in self._compiled:
            self._compiled[name] = self.env.get_template(name)
        return self._compiled[name]

    def render(self, template: Any, values: dict[str, Any]) -> str:
        """``template.render(values)`` without copying ``values`` into a new context (half the
        cost of a render for short templates). ``values`` must not be used again by the
        caller; the environment's globals are added to it."""
        for name, value in self.env.globals.items():
            values.setdefault(name, value)
        try:
            return self.env.concat(
                template.root_render_func(template.new_context(values, shared=True))
            )  # type: ignore[attr-defined]
        except Exception:
            return self.env.handle_exception()

    def string(self, text: str) -> Any:
        key = "\0" + text
        if key not in self._compiled:
            self._compiled[key] = self.env.from_string(text)
        return self._compiled[key]


def _check_templates(rules: CadenceRules, templates: Templates, origin: str) -> str:
    """Compile every template; returns their texts joined (for the version). Errors name the
    file, the cadence and the step."""
    texts = []
    for cadence in rules.cadences:
        for number, step in enumerate(cadence.steps, start=1):
            where = f"{origin}: cadence {cadence.name}: step {number} ({step.name})"
            path = templates.directory / step.template
            if not path.is_file():
                raise config.ConfigError(
                    f"{where}: template {step.template} not found in {templates.directory}"
                )
            try:
                templates.file(step.template)
                if step.subject:
                    templates.string(step.subject)
            except TemplateError as exc:
                line = getattr(exc, "lineno", None)
                raise config.ConfigError(
                    f"{where}: template {step.template}"
                    + (f" line {line}" if line else "")
                    + f": {exc}"
                ) from None
            texts.append(f"# {step.template}\n{config.read_text(path)}")
    return "\n".join(texts)


def load_rules(path: str | Path) -> tuple[CadenceRules, str, Templates]:
    """The cadences, their version (hash of the file and its templates) and the templates
    (from ``templates/`` beside the file)."""
    from leadflow.settings import rules_file

    path = rules_file(path)
    text = config.read_text(path)
    try:
        rules = config.load_text(CadenceRules, text, str(path))
    except config.ConfigError as exc:
        raise config.ConfigError(_named(str(exc), text)) from None
    templates = Templates(path.parent / "templates")
    template_text = _check_templates(rules, templates, str(path))
    return rules, config.content_version(text + "\n" + template_text), templates


def _named(message: str, text: str) -> str:
    """``cadences[0].steps[2].channel`` -> ``cadence warm: step 3 (call-task): channel``:
    what the person editing the file calls them."""
    import yaml

    try:
        data = yaml.safe_load(text) or {}
        cadences = data.get("cadences") or []
    except (yaml.YAMLError, AttributeError):
        return message

    def name_of(match: re.Match[str]) -> str:
        index = int(match.group(1))
        cadence = (
            cadences[index] if index < len(cadences) and isinstance(cadences[index], dict) else {}
        )
        out = f"cadence {cadence.get('name', index)}"
        if match.group(2) is not None:
            number = int(match.group(2))
            steps = cadence.get("steps") or []
            step = steps[number] if number < len(steps) and isinstance(steps[number], dict) else {}
            out += f": step {number + 1}" + (f" ({step['name']})" if step.get("name") else "")
        return out + (": " if match.group(3) else "")

    return re.sub(r"cadences\[(\d+)\](?:\.steps\[(\d+)\])?(\.)?", name_of, message)


def load_suppression(path: Path | None) -> tuple[frozenset[str], frozenset[str]]:
    """The suppression list: (emails, domains), lower-case. One entry per line: an address,
    or a domain (``example.com`` or ``@example.com``); ``#`` starts a comment."""
    if path is None or not path.exists():
        return frozenset(), frozenset()
    emails, domains = set(), set()
    for raw in config.read_text(path).splitlines():  # not UTF-8: a ConfigError
        entry = raw.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        if "@" in entry.lstrip("@"):
            emails.add(entry)
        else:
            domains.add(entry.lstrip("@"))
    return frozenset(emails), frozenset(domains)
