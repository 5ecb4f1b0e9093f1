"""Tier 4, e2e: the ``leadflow`` and ``prefect`` commands as processes, the web app on a
real port, the demo and the deployed stack. On the session's Prefect test server
(``prefect_api``) unless a module overrides ``_prefect_server`` (test_web_hardening.py:
nothing there talks to a Prefect API).

``installed_package``: the wheel built from this checkout, installed into a folder of its
own, for the tests that run leadflow as a host without the checkout would
(test_wheel.py, test_deployed.py's worker)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ROOT

# Not copied into the build folder: the checkout's top-level folders the wheel does not
# carry, and build leftovers anywhere.
_TOP_LEVEL_SKIPPED = {".venv", ".git", "var", "build", "dist", "tests", "bench", "docs", "deploy"}
_LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache")


def _not_built(folder: str, names: list[str]) -> set[str]:
    skipped = set(_LEFTOVERS(folder, names))
    return skipped | (_TOP_LEVEL_SKIPPED & set(names) if Path(folder) == ROOT else set())


@pytest.fixture(autouse=True)
def _prefect_server(prefect_api: None) -> None:
    pass


@dataclass(frozen=True)
class Installed:
    """The installed wheel: ``site`` is the folder ``pip install --target`` filled."""

    site: Path
    wheel: Path

    def env(self, home: Path, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """An environment (``base``, default this process's) that runs the installed package:
        ``PYTHONPATH`` is ``site`` (it comes before the checkout's editable install, whose
        finder Python asks last), the data folder is ``home``, and no LEADFLOW_* setting of
        ``base`` leaks in but those in ``extra`` (the rules are the package's defaults
        unless ``extra`` says otherwise)."""
        env = {
            k: v
            for k, v in (os.environ if base is None else base).items()
            if not k.startswith("LEADFLOW_") and k not in ("PYTHONPATH", "PYTHONSAFEPATH")
        }
        env.update({"PYTHONPATH": str(self.site), "LEADFLOW_HOME": str(home)}, **extra)
        return env


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The checkout's wheel (``pip wheel --no-deps --no-build-isolation``), built once per
    session from a copy of the source tree (an in-tree build would leave ``build/`` in the
    checkout, and setuptools' ``build/lib`` keeps modules deleted since, which a later wheel
    would carry), and installed with ``pip install --no-deps --target`` (the dependencies are
    the venv's)."""
    folder = tmp_path_factory.mktemp("wheel")
    source, dist, site = folder / "source", folder / "dist", folder / "site"
    shutil.copytree(ROOT, source, ignore=_not_built)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]

    def run(*argv: str, cwd: Path) -> None:
        done = subprocess.run([*pip, *argv], cwd=cwd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"pip {argv}: {done.stdout[-2000:]}{done.stderr[-3000:]}"

    run("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), ".", cwd=source)
    (wheel,) = dist.glob("leadflow-*.whl")
    run("install", "--no-deps", "--target", str(site), str(wheel), cwd=folder)
    return Installed(site=site, wheel=wheel)
