"""Runtime settings, read from the environment once per call site.

Every setting has a default that makes the demo run with no configuration: a SQLite file
under the project's ``var/`` folder, batch sizes that fit a laptop, a 5% quarantine limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path


def checkout() -> Path | None:
    """The source checkout this package runs from (an editable install), or None when it is
    an installed wheel (its parent folder is ``site-packages``, with no ``pyproject.toml``)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def project_home() -> Path:
    """The data folder: it holds ``var/`` (database, GX results, Data Docs, reports, drop
    folders, sample data). Code and rules are elsewhere (the package; ``Settings.rules_dir``).

    ``LEADFLOW_HOME`` wins; otherwise, in the source checkout (an editable install), the
    checkout; otherwise (an installed wheel) the current directory. Deployed flows run in the
    worker's own ``LEADFLOW_HOME``: prefect.yaml's pull step ``app.deploy_steps.enter_home``
    changes into it.
    """
    if env := os.environ.get("LEADFLOW_HOME"):
        return Path(env).expanduser().resolve()
    return checkout() or Path.cwd()


def bundled(name: str) -> Path:
    """Defaults leadflow ships (the folders ``rules`` and ``suites``, the file
    ``prefect.yaml``): the copy an installed wheel carries under ``leadflow/defaults/``
    (setup.py puts it there), else, in the checkout, the checkout's own."""
    shipped = Path(__file__).resolve().parent / "defaults" / name
    if shipped.exists():
        return shipped
    root = checkout()
    return root / name if root else shipped


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
    # Where ``database_url`` came from, said with it to a person (``database_label``).
    database_source: str = "from LEADFLOW_DATABASE_URL"
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
        """Reviewed config (rules, lists, source mappings, templates): ``rules_folder()``."""
        return rules_folder()


def rules_folder() -> Path:
    """The rules folder: ``LEADFLOW_RULES_DIR``, else the ``directory`` of the
    ``leadflow-rules-location`` block named by ``LEADFLOW_RULES_BLOCK``, else the defaults
    leadflow ships (``bundled("rules")``)."""
    if env := os.environ.get("LEADFLOW_RULES_DIR"):
        return Path(env)
    if name := os.environ.get("LEADFLOW_RULES_BLOCK"):
        return Path(_block_field(name, "leadflow-rules-location", "directory"))
    return bundled("rules")


def rules_file(path: str | Path) -> Path:
    """A rules file a person or a deployment parameter named: as given when it exists
    (absolute, or relative to the working directory); otherwise, when relative, the same name
    in ``rules_folder()`` (a leading ``rules/`` dropped: ``rules/scoring.yaml`` is
    ``<rules folder>/scoring.yaml``), so a worker with only the package and its data folder
    finds what a checkout has under ``rules/``. A name found nowhere comes back as given (the
    loader's error names it)."""
    given = Path(path)
    if given.is_absolute() or given.exists():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("rules",) else given.parts
    candidate = rules_folder().joinpath(*parts) if parts else given
    return candidate if candidate.exists() else given


def get_settings() -> Settings:
    """Read the settings from the environment (cheap; call it where you need it)."""
    home = project_home()
    database_url, database_source = _database(home)
    return Settings(
        home=home,
        database_url=database_url,
        database_source=database_source,
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
    """A field of the block ``name`` of type ``slug`` (``read_block``), cached per process. A
    missing block names itself and how to create it."""
    data = read_block(name, slug)
    if data is None:
        raise ValueError(
            f"{_BLOCK_ENV[slug]}={name!r}: no {slug} block of that name; create it with "
            "`leadflow blocks init` (from LEADFLOW_* environment variables) or in the Prefect UI"
        )
    return in_clear(data[key])


def in_clear(value: object) -> str:
    """A block field as text, a secret's value in clear."""
    reveal = getattr(value, "get_secret_value", None)
    return reveal() if reveal is not None else str(value)


def configured_prefect_api() -> str | None:
    """The Prefect server this host is set up for: ``PREFECT_API_URL`` in the environment or
    in the active Prefect profile. A server set only for this process (Prefect's test
    harness, ``temporary_settings``) does not count, so the demo and
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


DEFAULT_DATABASE_BLOCK = "leadflow"  # the name ``leadflow blocks init`` saves it under


def _database(home: Path) -> tuple[str, str]:
    """(database URL, where it came from): the command line finds the database the deployed
    flows use, in this order:

    1. ``LEADFLOW_DATABASE_URL``;
    2. the Leadflow Database block named by ``LEADFLOW_DATABASE_BLOCK`` (it must exist);
    3. when a Prefect API is configured (``PREFECT_API_URL`` in the environment or the
       active profile), the block named ``leadflow`` if the server has one. A configured API
       that does not answer is a ``ValueError`` naming its URL (one line, exit 2 on the
       command line), never a quiet SQLite. A
       server without that block falls back to the demo SQLite and says so in the source
       (every command's ``--json`` "database_source"; ``leadflow doctor`` fails it): a demo
       or a test run beside a server needs no block, and the label keeps it from passing
       for the deployment's database;
    4. the demo's SQLite file, ``var/leadflow.db`` under the home folder.
    """
    if url := os.environ.get("LEADFLOW_DATABASE_URL"):
        return url, "from LEADFLOW_DATABASE_URL"
    if name := os.environ.get("LEADFLOW_DATABASE_BLOCK"):
        return _block_field(name, "leadflow-database", "url"), f"from block {name!r}"
    demo = f"sqlite:///{home / 'var' / 'leadflow.db'}"
    api = configured_prefect_api()
    if api is None:
        return demo, "the demo database"
    url = _default_block_url(api, DEFAULT_DATABASE_BLOCK)
    if url is None:
        return demo, (
            f"the demo database: the Prefect server at {api} has no "
            f"{DEFAULT_DATABASE_BLOCK!r} database block"
        )
    return url, f"from block {DEFAULT_DATABASE_BLOCK!r}"


@lru_cache(maxsize=8)
def _default_block_url(api: str, name: str) -> str | None:
    """The URL in the ``name`` database block on the server at ``api``, None if it has none.
    Looked up once per process and server: ``get_settings()`` is called everywhere."""
    import httpx

    try:
        data = read_block(name, "leadflow-database")
    except (httpx.HTTPError, OSError) as exc:
        raise ValueError(
            f"PREFECT_API_URL={api}: the Prefect API does not answer ({type(exc).__name__}), "
            f"so the {name!r} database block cannot be read; start the server, or set "
            "LEADFLOW_DATABASE_URL to name the database without it"
        ) from None
    return None if data is None else in_clear(data["url"])


def database_label(url: str | None = None) -> str:
    """The database fit to show a person: ``postgresql://host:port/db`` (no user, password
    or options) or the SQLite file's path. Default: the one ``get_settings()`` finds."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url or get_settings().database_url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.database or ":memory:"
    host = parsed.host or "localhost"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{backend}://{host}{port}/{parsed.database or ''}"


def database_description() -> str:
    """The database ``get_settings()`` finds and where from, for a message: e.g.
    ``postgresql://db-host/leads (from block 'leadflow')``."""
    settings = get_settings()
    return f"{database_label(settings.database_url)} ({settings.database_source})"


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
