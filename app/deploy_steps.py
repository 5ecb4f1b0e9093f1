"""Deployment steps prefect.yaml names by their import path; a worker runs them from the
installed package, so no step depends on where a checkout is (or whether there is one).

``enter_home`` is the pull step of every deployment: before the flow is loaded (by module,
``flows.pipeline:pipeline``), the flow run's process changes into the data folder of the
worker it runs on, its own ``LEADFLOW_HOME`` read on that worker when the run starts (a
``{{ $VAR }}`` in prefect.yaml is filled in by ``prefect deploy`` on the deploying host
instead). Relative ``var/...`` parameters (drop folders, ``learn``'s output) are then under
that folder, and relative rules names (``rules/scoring.yaml``) are found in the rules folder
(``leadflow.settings.rules_file``).
"""

from __future__ import annotations

import os
from pathlib import Path

from leadflow.config import ConfigError
from leadflow.settings import checkout, project_home


def enter_home() -> dict[str, str]:
    """Change into this worker's data folder and return it as ``{"directory": PATH}`` (the
    shape of Prefect's ``set_working_directory``): ``LEADFLOW_HOME``, created if missing, or,
    when the package runs from a source checkout and ``LEADFLOW_HOME`` is unset, the
    checkout. An installed package with no ``LEADFLOW_HOME`` is refused in one line: the
    flow run's own folder is a temporary one the worker deletes, data kept there would be
    lost."""
    if not os.environ.get("LEADFLOW_HOME") and checkout() is None:
        raise ConfigError(
            "LEADFLOW_HOME is not set on this worker: set it to the data folder (it holds "
            "var/: the SQLite database, GX results, Data Docs, drop folders) in the "
            "environment of `prefect worker start`"
        )
    home: Path = project_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"LEADFLOW_HOME={home}: cannot create it ({exc.strerror})") from None
    os.chdir(home)
    return {"directory": str(home)}
