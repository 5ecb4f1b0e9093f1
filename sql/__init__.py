"""Schema migrations (Alembic) and the SQL that KPI reports read."""

from collections.abc import Sequence
from pathlib import Path

VIEWS_DIR = Path(__file__).resolve().parent / "views"


def create_views(op: object, names: Sequence[str]) -> None:
    """In a migration: create each view from ``sql/views/<name>.sql``."""
    for name in names:
        op.execute((VIEWS_DIR / f"{name}.sql").read_text(encoding="utf-8"))  # type: ignore[attr-defined]


def drop_views(op: object, names: Sequence[str]) -> None:
    """In a migration's downgrade: drop the views, last created first."""
    for name in reversed(names):
        op.execute(f"DROP VIEW IF EXISTS {name}")  # type: ignore[attr-defined]
