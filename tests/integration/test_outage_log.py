"""The worker's log on a healthy start and through a broker outage: a few clear lines.

A dedicated Apache Kafka broker (stopping the session one would disturb other
tests) is stopped for about 30 s and started again on the same port.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.tools.brokers import ApacheKafkaBroker
from tests.harness import running_worker, scratch_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 30.0


@pytest.fixture
def broker() -> Iterator[ApacheKafkaBroker]:
    with ApacheKafkaBroker() as broker:
        yield broker


def log_lines(log: Path) -> list[str]:
    """The worker's output without its periodic stats lines."""
    return [ln for ln in log.read_text(errors="replace").splitlines() if not ln.startswith('{"stats"')]


def wait_for_line(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in ln for ln in log_lines(log)):
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(log_lines(log)[-40:])
        time.sleep(0.5)


def test_a_healthy_start_then_an_outage_in_a_few_lines(broker: ApacheKafkaBroker, tmp_path: Path) -> None:
    # Prepare: a worker on its own broker, up and owning its partitions
    settings = scratch_settings(broker.bootstrap, tmp_path, "outage", partitions=2)
    log = tmp_path / "worker.log"
    with running_worker(settings, tmp_path, "--stats-interval", "5") as worker:
        wait_for_line(log, "worker ready: owns partitions 0,1", timeout=120)
        time.sleep(6)  # past the outage log's grace: a start-up hiccup would have been reported by now
        at_start = log_lines(log)

        # Execute: the broker goes away for ~30 s and comes back on the same port
        broker.stop()
        time.sleep(OUTAGE_S)
        broker.start()
        wait_for_line(log, "reconnected to the broker", timeout=120)
        assert worker.poll() is None
        after = log_lines(log)

    # Assert: a healthy start says it is ready and nothing at WARNING or ERROR
    assert [ln for ln in at_start if "WARNING" in ln or "ERROR" in ln] == [], at_start
    assert [ln for ln in at_start if ln.startswith("worker ready")] == [at_start[-1]]
    # ... and the outage is a handful of lines: unreachable (maybe "still"), then reconnected
    outage = after[len(at_start) :]
    assert 2 <= len(outage) <= 4, outage
    assert outage[0].startswith("broker unreachable, retrying: ")
    assert outage[-1].startswith("reconnected to the broker: the outage lasted ")
    lasted = float(outage[-1].split("lasted ")[1].split(" s")[0])
    assert OUTAGE_S - 10 <= lasted <= OUTAGE_S + 60
