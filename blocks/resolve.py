"""The one resolver for ``block:NAME``: every option that accepts a saved Prefect block
(database, firmographics provider, rules, notifier) goes through ``load``."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block

PREFIX = "block:"


class MissingBlock(ValueError):
    """A block that is not saved (or not of a usable kind); the message says how to make one."""


def block_name(spec: str | None) -> str | None:
    """``block:NAME`` -> NAME; anything else -> None."""
    if spec and spec.startswith(PREFIX):
        return spec[len(PREFIX) :]
    return None


def load(name: str, kinds: tuple[type[Block], ...], what: str) -> Any:
    """The saved block ``name`` ("type-slug/name", or the name of a block of one of
    ``kinds``, tried in order). Raises ``MissingBlock`` naming it and how to create it."""
    if "/" in name:
        try:
            block = Block.load(name)
        except ValueError as exc:
            raise MissingBlock(_missing(name, kinds, what)) from exc
        if not isinstance(block, kinds):
            raise MissingBlock(
                f"block {name!r} is a {type(block).__name__}, not a {what} "
                f"({' or '.join(k.__name__ for k in kinds)})"
            )
        return block
    for kind in kinds:
        try:
            return kind.load(name)
        except ValueError:
            continue
    raise MissingBlock(_missing(name, kinds, what))


def _missing(name: str, kinds: tuple[type[Block], ...], what: str) -> str:
    slugs = ", ".join(k.get_block_type_slug() for k in kinds)
    return (
        f"no {what} block named {name!r} (types: {slugs}); create it with `leadflow blocks "
        "init` (from LEADFLOW_* environment variables: `leadflow blocks init --help`) or in "
        "the Prefect UI"
    )
