"""The device package stays torch-free and at the bottom of the import order."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "edge" / "metastream_edge"
ALLOWED = {
    "numpy",
    "kafka",
    "safetensors",
    "cryptography",
    "Crypto",  # pycryptodome (secure aggregation)
    "paho",  # paho-mqtt, the `mqtt` extra
    "metastream_edge",
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_package_imports_only_its_dependencies_and_the_standard_library() -> None:
    # Execute
    outside = {
        f.name: sorted(r for r in imported_roots(f) - ALLOWED if r not in sys.stdlib_module_names)
        for f in sorted(PACKAGE.glob("*.py"))
    }
    # Assert
    assert {name: roots for name, roots in outside.items() if roots} == {}


def test_importing_every_module_loads_no_torch_faust_or_river() -> None:
    # Prepare: a fresh interpreter (this one has torch loaded already)
    modules = [f"metastream_edge.{f.stem}" for f in sorted(PACKAGE.glob("*.py")) if f.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'faust', 'river')))\n"
    )
    # Execute
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Assert
    assert done.stdout.strip() == "[]"
