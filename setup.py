"""Build hook (the rest of the build is in pyproject.toml): the wheel carries the reviewed
config that the checkout keeps at its top level, ``rules/`` (rules, lists, source mappings,
nurture templates), ``suites/`` (the gates' expectation suites) and ``prefect.yaml`` (the
deployments), as package data under ``leadflow/defaults/``, so an installed wheel runs and
deploys every flow with no checkout beside it.

An editable install (``make``) copies nothing: it reads the checkout's folders in place
(``leadflow.settings.bundled``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DEFAULTS = ("rules", "suites")
FILES = ("prefect.yaml",)  # the deployments: `leadflow setup` deploys them from the package


class BuildWithDefaults(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in DEFAULTS:
            source = Path(__file__).resolve().parent / name
            if not source.is_dir():
                raise SystemExit(f"{source}: missing; the wheel must carry the default {name}")
            target = Path(self.build_lib) / "leadflow" / "defaults" / name
            shutil.rmtree(target, ignore_errors=True)  # nothing stale from an earlier build
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        for name in FILES:
            target = Path(self.build_lib) / "leadflow" / "defaults" / name
            shutil.copyfile(Path(__file__).resolve().parent / name, target)


setup(cmdclass={"build_py": BuildWithDefaults})
