"""Fixtures shared by unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tools.cli import main as metastream


@pytest.fixture(scope="module")
def fleet_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seeded fleet (8 devices, 1,600 readings) written by ``metastream generate``."""
    path = tmp_path_factory.mktemp("fleet") / "fleet.csv"
    assert (
        metastream(["generate", "--out", str(path), "--devices", "8", "--readings", "1600", "--seed", "1"])
        == 0
    )
    return path
