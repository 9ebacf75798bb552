"""``metastream bench --edge``: what the device package costs on a device.

Builds the ``metastream-edge`` wheel from ``./edge``, installs it into a fresh
virtual environment (dependencies from PyPI, pip's cache in
``~/.cache/metastream/pip``), and measures there, in a process that never
imports torch: the installed size of that environment (pip included), the
time from starting the process to its first prediction from a signed model
file, its resident memory then, and the median times of a one-reading
prediction and of a k = 5 adaptation on 32 readings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np

from connectors.signing import Signer
from learners import LearnerConfig
from learners.fleet import FleetLearner

ROOT = Path(__file__).resolve().parents[2]
EDGE_SOURCE = ROOT / "edge"
PIP_CACHE = Path.home() / ".cache" / "metastream" / "pip"

TARGETS = {
    "venv_mb": 150.0,
    "rss_after_start_mb": 60.0,
    "predict_us_median": 20.0,
    "adapt_ms_median": 5.0,
}
"""Issue #16's targets for a device."""


def build_edge_venv(work: Path) -> Path:
    """``pip wheel --no-deps ./edge`` and a fresh venv with only that wheel (and its deps); its python."""
    if not (EDGE_SOURCE / "pyproject.toml").exists():
        raise FileNotFoundError(f"{EDGE_SOURCE}/pyproject.toml not found: run from a clone of metastream")
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = work / "edge-src"
    shutil.copytree(EDGE_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    cache = ["--cache-dir", str(PIP_CACHE)]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--quiet", *cache, "-w", str(work / "dist"), str(source)], check=True
    )
    (wheel,) = (work / "dist").glob("metastream_edge-*.whl")
    venv.EnvBuilder(with_pip=True).create(work / "venv")
    python = work / "venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *cache, str(wheel)],
        check=True,
    )
    return python


def tree_mb(path: Path) -> float:
    """Bytes on disk under ``path`` (allocated blocks), in MB (10⁶ bytes)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_blocks * 512
    return total / 1e6


def signed_model(work: Path) -> tuple[Path, Path]:
    """A model of the worker's default architecture (8 → 32 → 1), signed; model and public key files."""
    signer = Signer.generate()
    signer.save(work / "worker.key.pem", work / "worker.pub.pem")
    fleet = FleetLearner(LearnerConfig(n_features=8))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8))
    fleet.learn_predict(["dev-0"] * 64, x, x.sum(1))
    (work / "model.signed").write_bytes(signer.seal(fleet.export("dev-0", 1)))
    return work / "model.signed", work / "worker.pub.pem"


def measure(python: Path, model: Path, key: Path) -> dict[str, Any]:
    """Run :mod:`metastream_edge.bench` in the edge venv; adds the start → first prediction time."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cmd = [str(python), "-m", "metastream_edge.bench", "--model", str(model), "--trusted-key", str(key)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=model.parent)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_s = time.perf_counter() - start
    rest = proc.stdout.read()
    if proc.wait() != 0 or not first.startswith("first prediction"):
        raise RuntimeError(f"edge bench failed: {first}{rest}")
    out: dict[str, Any] = json.loads(rest.splitlines()[-1])
    out["start_to_first_prediction_ms"] = round(first_s * 1e3, 1)
    return out


def run_edge_bench(args: argparse.Namespace) -> int:
    """Handler of ``metastream bench --edge``."""
    with tempfile.TemporaryDirectory(prefix="metastream-edge-bench-") as tmp:
        work = Path(tmp)
        python = build_edge_venv(work)
        figures = {"venv_mb": round(tree_mb(work / "venv"), 1)}
        model, key = signed_model(work)
        runs = [measure(python, model, key) for _ in range(max(1, args.repeat))]
    for name in (
        "rss_after_start_mb",
        "predict_us_median",
        "adapt_ms_median",
        "start_to_first_prediction_ms",
    ):
        figures[name] = float(np.median([r[name] for r in runs]))
    if args.json:
        print(json.dumps({"edge": figures, "targets": TARGETS, "runs": len(runs)}))
        return 0
    labels = {
        "venv_mb": "installed size of the edge venv, pip included (MB)",
        "rss_after_start_mb": "resident memory after start (MB)",
        "predict_us_median": "predict one reading, median (µs)",
        "adapt_ms_median": "k = 5 adaptation on 32 readings, median (ms)",
        "start_to_first_prediction_ms": "process start → first prediction (ms)",
    }
    print(f"edge device (metastream-edge in its own venv, no torch; median of {len(runs)} runs)")
    for name, label in labels.items():
        target = TARGETS.get(name)
        verdict = (
            ""
            if target is None
            else f"  target ≤ {target:g}  {'ok' if figures[name] <= target else 'MISSED'}"
        )
        print(f"  {label:<56} {figures[name]:>9.2f}{verdict}")
    return 0
