"""Imports run downward only: the contracts in pyproject.toml hold, and they catch an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "connectors", "learners")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # The packages are found from ``cwd`` first, so a copy of the tree can be checked as well.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT / "edge")])}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache", str(cwd / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_with_import(to: Path, importer: str, imported: str) -> None:
    """Copy the packages and the contracts to ``to``, then make ``importer`` import ``imported``."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, to / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", to / "pyproject.toml")
    module = to / (importer.replace(".", "/") + ".py")
    module.write_text(module.read_text() + f"\nimport {imported}  # noqa: E402\n")


def test_every_import_contract_is_kept() -> None:
    # Execute
    run = lint_imports(ROOT)
    # Assert
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("pipeline.worker", "pipeline.tools.cli"),  # runtime -> tooling
        ("connectors.producer", "pipeline.tools.progress"),  # SDK -> tooling
        ("connectors.producer", "learners.evaluation.synthetic"),  # SDK -> evaluation harness
        ("learners.fleet", "learners.evaluation.prequential"),  # core -> evaluation harness
        ("learners.fleet", "pipeline.worker_core"),  # core -> runtime
        ("learners.nets", "faust"),  # core -> stream framework
        ("connectors.admin", "pipeline.worker_core"),  # SDK -> runtime
    ],
)
def test_an_upward_import_breaks_a_contract(tmp_path: Path, importer: str, imported: str) -> None:
    # Prepare: a copy of the tree with one upward import added.
    copy_with_import(tmp_path, importer, imported)
    # Execute
    run = lint_imports(tmp_path)
    # Assert
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"{importer} -> {imported}" in run.stdout


def test_an_import_cycle_breaks_a_contract(tmp_path: Path) -> None:
    # Prepare: a copy of the tree where chunk_layout imports checkpoints, which imports chunk_layout.
    copy_with_import(tmp_path, "pipeline.chunk_layout", "pipeline.checkpoints")
    # Execute
    run = lint_imports(tmp_path)
    # Assert
    assert run.returncode == 1, run.stdout + run.stderr
    assert "No cycles are allowed in pipeline." in run.stdout
    assert "- .chunk_layout -> .checkpoints (1 import)" in run.stdout
