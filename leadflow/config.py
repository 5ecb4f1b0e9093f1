"""Loading reviewed YAML config (mappings, rules) into pydantic models.

Errors name the file, the field and the bad value, so the person editing the file can fix
it without reading code. A config's version is the hash of its text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be used; the message says where and why."""


def content_version(text: str) -> str:
    """A rule set's version: the first 12 hex digits of the SHA-256 of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def describe_validation_error(origin: str, error: ValidationError) -> str:
    lines = [f"{origin}: {error.error_count()} problem(s)"]
    for item in error.errors(include_url=False):
        where = _location(tuple(item["loc"]))
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
        if len(shown) > 80:
            shown = shown[:77] + "..."
        message = item["msg"]
        lines.append(f"  {origin}: {where}: {message} (value: {shown})")
    return "\n".join(lines)


def parse(model: type[Model], data: Any, origin: str) -> Model:
    """Validate ``data`` as ``model``; raise ``ConfigError`` naming ``origin`` on failure."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data, context={"origin": origin})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(origin, exc)) from exc


def read_text(path: str | Path) -> str:
    """A config file's text. A relative name not found in the working directory is looked
    up in the rules folder (``leadflow.settings.rules_file``: ``rules/scoring.yaml`` on a
    worker that has only the installed package and its data folder)."""
    from leadflow.settings import rules_file

    path = rules_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def load_text(model: type[Model], text: str, origin: str) -> Model:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{origin}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from exc
    return parse(model, data, origin)


def load(model: type[Model], path: str | Path) -> tuple[Model, str]:
    """Load and validate a YAML file (found as ``read_text`` finds it); returns the model and
    the text's version hash."""
    from leadflow.settings import rules_file

    path = rules_file(path)
    text = read_text(path)
    return load_text(model, text, str(path)), content_version(text)
