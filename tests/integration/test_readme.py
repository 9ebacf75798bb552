"""A newcomer follows the README literally: fresh clone, ``make demo``, then the code examples.

The clone test runs the README's own command line in a ``git clone`` of the
committed HEAD (commit before running it: uncommitted edits are not what a
newcomer gets).  The examples test runs the README's fenced ``python`` blocks
unchanged, except for the broker address of the plain kafka-python one,
against a real Apache Kafka broker with a stream worker running, the way
"Run the pieces yourself" sets them up.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.edge import META_KEY, EdgeSubscriber
from connectors.settings import Settings
from connectors.signing import Verifier
from pipeline.tools.brokers import ApacheKafkaBroker
from tests.harness import running_worker
from tests.readme import ROOT, Block, blocks, commands, table

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLONE_DISK_GB = 8  # the clone's .venv holds PyTorch and its CUDA libraries: about 6 GB


def readme_command(section: str, contains: str) -> str:
    """The one command of ``section``'s bash blocks that contains ``contains``."""
    found = [
        c for b in blocks() if b.section == section and b.lang == "bash" for c in commands(b) if contains in c
    ]
    assert len(found) == 1, f"README section {section!r}: expected one command with {contains!r}, got {found}"
    return found[0]


def summary_lines(output: str) -> list[str]:
    """The lines of the demo's summary block, stripped."""
    summary = output[output.index("metastream demo — summary") :]
    return [line.strip() for line in summary.splitlines()[1:] if line.strip()]


def value(lines: list[str], label: str) -> str:
    """What follows ``label`` on its summary line."""
    found = [line[len(label) :].strip(" :") for line in lines if line.startswith(label)]
    assert len(found) == 1, (label, lines)
    return found[0]


def test_a_fresh_clone_runs_make_demo_as_written(tmp_path: Path) -> None:
    # Prepare: the committed repository, cloned as a newcomer would, and the README's short demo.
    free_gb = shutil.disk_usage(tmp_path).free / 1e9
    assert free_gb > CLONE_DISK_GB, f"{free_gb:.1f} GB free; the clone's .venv needs ~{CLONE_DISK_GB} GB"
    clone = tmp_path / "metastream"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    command = readme_command("A 5-minute tour: `make demo`", "--duration")
    promised = [row[0] for row in table("A 5-minute tour: `make demo`")]
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"CI": "true"}

    try:
        # Execute
        done = subprocess.run(
            shlex.split(command), cwd=clone, env=env, capture_output=True, text=True, timeout=900
        )

        # Assert
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert (clone / ".venv" / ".installed").exists()
        lines = summary_lines(done.stdout)
        assert [label for label in promised if not any(line.startswith(label) for line in lines)] == []
        assert value(lines, "readings produced").startswith("40,000 at ")
        assert int(value(lines, "drifts detected")) > 0
        adapted = re.fullmatch(r"(\d+) after drift, (\d+) for new devices", value(lines, "adaptations"))
        assert adapted is not None and int(adapted[1]) > 0 and int(adapted[2]) == 50
        errors = value(lines, "error before → after adaptation (median, after drifts)")
        before, after = map(float, errors.split(" → "))
        assert after < before
        # v1 is a device's first model, v2 the one adapted after its drift (timing may add one).
        edges = dict(re.findall(r"^    (dev-\d{4}): v(\d+)$", done.stdout, re.M))
        assert sorted(edges) == ["dev-0000", "dev-0001", "dev-0002"]
        assert min(map(int, edges.values())) >= 1 and max(map(int, edges.values())) >= 2
        assert value(lines, "models refused at the edge") == "0"
    finally:
        shutil.rmtree(clone, ignore_errors=True)  # ~6 GB


def python_examples() -> list[Block]:
    return [b for b in blocks() if b.lang == "python"]


def run_example(block: Block, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", block.text], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"README example failed:\n{block.text}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_readme_python_examples_produce_and_receive_a_verified_model(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    # Prepare: the README's key pair, a worker signing with it, on the default topics.
    keygen = readme_command("Run the pieces yourself", "keys generate")
    subprocess.run(
        [sys.executable, "-m", "pipeline.tools.cli", *shlex.split(keygen)[1:]], cwd=tmp_path, check=True
    )
    broker = f"kafka://{kafka_broker.bootstrap}"
    settings = Settings(broker=broker, signing_key=str(tmp_path / "worker.key.pem"))
    # The MQTT device example needs Mosquitto and the bridge: test_mqtt_bridge.py runs it.
    sdk, plain, subscribe = [b for b in python_examples() if b.section != "Run it on a device"]
    assert "127.0.0.1:9092" in plain.text
    plain = dataclasses.replace(plain, text=plain.text.replace("127.0.0.1:9092", kafka_broker.bootstrap))
    env = {**os.environ, "METASTREAM_BROKER": broker}
    trusted = Verifier.from_files(tmp_path / "worker.pub.pem")

    with running_worker(settings, tmp_path, "--stats-interval", "1") as worker:
        with EdgeSubscriber(settings, [], trusted, follow_meta=True) as meta:
            meta.run(until=lambda: meta.current_version(META_KEY) is not None, timeout_s=120)
        assert meta.current_version(META_KEY) is not None, (tmp_path / "worker.log").read_text()[-3000:]

        # Execute
        sdk_out = run_example(sdk, tmp_path, env)
        plain_out = run_example(plain, tmp_path, env)
        subscribe_out = run_example(subscribe, tmp_path, env)
        with EdgeSubscriber(settings, ["greenhouse-8"], trusted) as edge:
            edge.run(until=lambda: edge.current_version("greenhouse-8") is not None, timeout_s=60)
            plain_version = edge.current_version("greenhouse-8")

        # Assert
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    assert sdk_out == "sent 300 readings\n"
    assert plain_out == ""
    version = re.search(r"^running model version (\d+)$", subscribe_out, re.M)
    assert version is not None and int(version[1]) >= 1, subscribe_out
    assert re.search(r"^prediction \[\s*-?[0-9.e+-]+\]$", subscribe_out, re.M), subscribe_out
    # Every model the subscribe example saw was accepted (none refused: one key, one worker).
    decisions = re.findall(r"^greenhouse-7 v\d+ (\w+)", subscribe_out, re.M)
    assert set(decisions) <= {"accepted"}
    assert plain_version is not None and plain_version >= 1
