"""The layout rule, checked (the import contracts themselves are `make lint`'s):

- every concern is a package ``leadflow/<concern>/`` that runs without Prefect, and its
  Prefect tasks, events and artifacts are ``tasks/<concern>.py``; ``tasks/`` holds nothing
  else but the shared Prefect helpers;
- no module imports, through any chain, a module that imports it back (no file cycles);
- no function longer than ``LONGEST`` lines outside tests and migrations: engines read as
  named steps.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LONGEST = 80
# Prefect helpers every concern uses (ops: runs a killed process left behind, for the lane)
SHARED_TASKS = {"hops", "lane", "ops", "reports", "rules_check"}
CODE = ("leadflow", "tasks", "flows", "app", "blocks", "bench", "sql")


def _python_files() -> list[Path]:
    files = []
    for top in CODE:
        files += [p for p in (ROOT / top).rglob("*.py") if "versions" not in p.parts]
    return files


def test_every_tasks_module_is_a_concern_or_a_shared_helper() -> None:
    concerns = {p.parent.name for p in (ROOT / "leadflow").glob("*/__init__.py")}
    modules = {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    strays = sorted(modules - concerns - SHARED_TASKS)
    assert not strays, f"tasks/ modules with no leadflow/<concern>/ package: {strays}"
    assert not [p for p in (ROOT / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"]


def test_no_module_imports_itself_back() -> None:
    graph = grimp.build_graph("leadflow", "tasks", "flows", "app", "blocks")
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == module:
                cycles.add((module, module))
                continue
            if imported.startswith(module + ".") or module.startswith(imported + "."):
                continue  # a package and its own modules
            if graph.find_shortest_chain(importer=imported, imported=module, as_packages=False):
                cycles.add(tuple(sorted((module, imported))))
    assert not cycles, f"import cycles: {sorted(cycles)}"


def test_no_function_is_a_wall() -> None:
    long = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert not long, f"functions over {LONGEST} lines:\n" + "\n".join(sorted(long))


def test_the_docs_name_only_files_that_exist() -> None:
    """README.md and docs/ point newcomers at files: every ``path/file.py`` (or folder/)
    they name exists."""
    pattern = re.compile(
        r"(?<![\w./-])((?:leadflow|tasks|flows|app|blocks|sql|tests|bench)/[\w/.-]*\w)"
    )
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for name in pattern.findall(line):
                path = name.split("::")[0]
                if not (ROOT / path).exists():
                    missing.append(f"{doc.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)


def test_test_modules_have_unique_names_across_tiers() -> None:
    """pytest imports test modules by basename (the tiers are not packages): two tiers with
    one name stop the whole run at collection."""
    from collections import Counter

    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []
