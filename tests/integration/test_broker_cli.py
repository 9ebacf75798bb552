"""``metastream broker start|status|stop`` as a user runs it, with the embedded broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

pytestmark = pytest.mark.integration


def metastream(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_broker_start_status_stop(tmp_path: Path) -> None:
    # Prepare
    env = {**os.environ, "METASTREAM_CACHE": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.tools.cli", "broker", "start", "--kind", "embedded"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        bootstrap = line.split("kafka://")[1].split()[0]
        # Execute
        status = metastream("broker", "status", env=env)
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send("t", b"x").get(timeout=10)
        producer.close()
        stop = metastream("broker", "stop", env=env)
        proc.wait(timeout=30)
        # Assert
        assert status.returncode == 0 and bootstrap in status.stdout
        assert stop.returncode == 0, stop.stderr
        assert metastream("broker", "status", env=env).returncode == 1
        assert not (tmp_path / "broker.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            time.sleep(0.5)
