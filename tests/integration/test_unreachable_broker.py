"""``worker``, ``edge`` and ``produce`` with no broker: one line, non-zero exit, within 10 s."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COMMANDS = [["worker"], ["edge", "--device", "d1"], ["produce", "--readings", "10"]]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_metastream(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,  # the whole run, Python start-up included
    )


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_a_closed_port_gives_one_line_naming_the_setting(argv: list[str], tmp_path: Path) -> None:
    # Prepare
    port = closed_port()
    env = {**os.environ, "METASTREAM_BROKER": f"kafka://127.0.0.1:{port}", "METASTREAM_CACHE": str(tmp_path)}

    # Execute
    out = run_metastream(argv, env)

    # Assert
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1, out.stderr
    expected = f"error: no Kafka broker answers at 127.0.0.1:{port} (from METASTREAM_BROKER);"
    assert out.stderr.startswith(expected), out.stderr
    assert "metastream broker start" in out.stderr


@pytest.mark.parametrize("argv", COMMANDS[:1], ids=lambda a: a[0])
def test_without_the_setting_the_error_points_at_the_local_broker(argv: list[str], tmp_path: Path) -> None:
    # Prepare: `metastream broker start`'s state file, naming a live process (this one)
    local = f"127.0.0.1:{closed_port()}"
    state = {"pid": os.getpid(), "bootstrap": local, "kind": "kafka"}
    (tmp_path / "broker.json").write_text(json.dumps(state))
    env = {k: v for k, v in os.environ.items() if k != "METASTREAM_BROKER"}
    env["METASTREAM_CACHE"] = str(tmp_path)

    # Execute
    out = run_metastream([*argv, "--broker", f"kafka://127.0.0.1:{closed_port()}"], env)

    # Assert
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert "(from --broker)" in out.stderr
    hint = f"`metastream broker status` knows one at kafka://{local}: pass --broker kafka://{local}"
    assert hint in out.stderr
