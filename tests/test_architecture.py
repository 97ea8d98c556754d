"""Imports run one way (issue 9): the import-linter contracts in pyproject.toml hold, and no
two modules of the project import each other, at module level or inside a function."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "accounts",
    "consultations",
    "messaging",
    "attachments",
    "frontdesk",
    "visits",
    "workers",
    "medease",
    "config",
)
CONTRACTS = {
    "medease-is-plumbing",
    "workers-knows-no-domain",
    "accounts-is-below-the-clinic",
    "app-layers",
    "acyclic-inside-apps",
}


def mutual_imports(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    """Every pair of modules that import each other directly, each pair once."""
    pairs = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if module in graph.find_modules_directly_imported_by(imported):
                pairs.add(tuple(sorted((module, imported))))
    return sorted(pairs)


def test_the_import_contracts_are_all_configured():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert set(config["root_packages"]) == set(PACKAGES)
    assert {contract["id"] for contract in config["contracts"]} == CONTRACTS


def test_import_linter_contracts_hold():
    # A child process: import-linter edits sys.path and logging of the process it runs in.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_two_modules_import_each_other():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert mutual_imports(graph) == []


def test_the_cycle_check_sees_imports_inside_functions(tmp_path, monkeypatch):
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "first.py").write_text("from cyclic import second\n")
    (package / "second.py").write_text("def late():\n    from cyclic.first import x\n")
    (package / "third.py").write_text("from cyclic import first\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic", cache_dir=None)
    assert mutual_imports(graph) == [("cyclic.first", "cyclic.second")]
