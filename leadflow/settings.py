"""Runtime settings, read from the environment once per call site.

Every setting has a default that makes the demo run with no configuration: a SQLite file
under the project's ``var/`` folder, batch sizes that fit a laptop, a 5% quarantine limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


def project_home() -> Path:
    """The folder that holds ``var/`` (database, Data Docs, sample data).

    ``LEADFLOW_HOME`` wins; otherwise the source checkout this package lives in (an editable
    install), otherwise the current directory.
    """
    if env := os.environ.get("LEADFLOW_HOME"):
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").exists():
        return checkout
    return Path.cwd()


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from exc


def _int(name: str, default: int) -> int:
    value = _float(name, default)
    if value != int(value) or value <= 0:
        raise ValueError(f"environment variable {name}={value!r} must be a positive integer")
    return int(value)


DROP_FOLDER_KINDS = ("leads", "events", "activities")


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    batch_size: int
    max_quarantine_rate: float
    claim_ttl_seconds: int
    prepare_workers: int
    var_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "var_dir", self.home / "var")

    @property
    def gx_dir(self) -> Path:
        """GX file context: validation results and Data Docs live here."""
        return Path(os.environ.get("LEADFLOW_GX_DIR") or self.var_dir / "gx")

    @property
    def data_docs_dir(self) -> Path:
        return Path(os.environ.get("LEADFLOW_DATA_DOCS_DIR") or self.var_dir / "data_docs")

    @property
    def inbox_dir(self) -> Path:
        """The drop folders the capture deployments read: ``var/inbox/<kind>``."""
        return self.var_dir / "inbox"

    def drop_folders(self) -> dict[str, Path]:
        """Each drop folder by kind (leads, events, activities): ``leadflow setup`` creates
        them, ``leadflow doctor`` checks them, prefect.yaml's capture deployments read them."""
        return {kind: self.inbox_dir / kind for kind in DROP_FOLDER_KINDS}

    @property
    def rules_dir(self) -> Path:
        """Reviewed config (rules, lists, mappings): the checkout's ``rules/`` by default."""
        if env := os.environ.get("LEADFLOW_RULES_DIR"):
            return Path(env)
        if name := os.environ.get("LEADFLOW_RULES_BLOCK"):
            return Path(_block_field(name, "leadflow-rules-location", "directory"))
        bundled = Path(__file__).resolve().parents[1] / "rules"
        return bundled if bundled.exists() else self.home / "rules"


def get_settings() -> Settings:
    """Read the settings from the environment (cheap; call it where you need it)."""
    home = project_home()
    default_db = f"sqlite:///{home / 'var' / 'leadflow.db'}"
    return Settings(
        home=home,
        database_url=os.environ.get("LEADFLOW_DATABASE_URL") or _block_url() or default_db,
        batch_size=_int("LEADFLOW_BATCH_SIZE", 100_000),
        max_quarantine_rate=_float("LEADFLOW_MAX_QUARANTINE_RATE", 0.05),
        claim_ttl_seconds=_int("LEADFLOW_CLAIM_TTL_SECONDS", 60),
        prepare_workers=_workers(),
    )


_BLOCK_ENV = {
    "leadflow-database": "LEADFLOW_DATABASE_BLOCK",
    "leadflow-rules-location": "LEADFLOW_RULES_BLOCK",
}


@lru_cache(maxsize=8)
def _block_field(name: str, slug: str, key: str) -> str:
    """A field of the block ``name`` of type ``slug``, read through the Prefect API (the core
    does not import the block classes). A missing block names itself and how to create it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(
                name, block_type_slug=slug, include_secrets=True
            )
        except ObjectNotFound as exc:
            raise ValueError(
                f"{_BLOCK_ENV[slug]}={name!r}: no {slug} block of that name; create it with "
                "`leadflow blocks init` (from LEADFLOW_* environment variables) or in the Prefect UI"
            ) from exc
    value = document.data[key]
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def configured_prefect_api() -> str | None:
    """The Prefect server this host is set up for: ``PREFECT_API_URL`` in the environment or
    in the active Prefect profile. Unlike ``prefect_api_url``, a server set only for this
    process (Prefect's test harness, ``temporary_settings``) does not count, so the demo and
    the flow tests need no Public Site block (``leadflow/links.py``)."""
    if env := os.environ.get("PREFECT_API_URL"):
        return env
    from prefect.settings import PREFECT_API_URL
    from prefect.settings.profiles import load_current_profile

    try:
        return load_current_profile().settings.get(PREFECT_API_URL) or None
    except Exception:  # an unreadable profiles file: no server configured there
        return None


def read_block(name: str, slug: str) -> dict | None:
    """The fields of the block ``name`` of type ``slug`` with its secrets in clear (None when
    there is no such block), read through the Prefect API each call (callers cache). A
    Prefect API that does not answer raises."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(
                name, block_type_slug=slug, include_secrets=True
            )
        except ObjectNotFound:
            return None
    return dict(document.data)


def _block_url() -> str | None:
    """The URL in the Prefect block named by ``LEADFLOW_DATABASE_BLOCK``, if any."""
    name = os.environ.get("LEADFLOW_DATABASE_BLOCK")
    return _block_field(name, "leadflow-database", "url") if name else None


def _workers() -> int:
    """Processes that prepare capture chunks alongside the writer (0: in-process)."""
    raw = os.environ.get("LEADFLOW_PREPARE_WORKERS")
    if raw not in (None, ""):
        value = _float("LEADFLOW_PREPARE_WORKERS", 0)
        if value < 0 or value != int(value):
            raise ValueError(f"environment variable LEADFLOW_PREPARE_WORKERS={raw!r} must be >= 0")
        return int(value)
    cores = os.cpu_count() or 1
    return cores if cores >= 2 else 0
