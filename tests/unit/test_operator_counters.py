"""The periodic stats line holds totals only; ``/metrics`` shows the guard and checkpoint counters."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from pipeline.metrics import MetricsReading, render
from pipeline.state import PipelineState
from pipeline.worker_core import MetaAggregator, WorkerCore
from wire.readings import Reading, encode_readings


def state_with_devices(n_devices: int) -> PipelineState:
    settings = Settings(n_features=2)
    signer = Signer.generate()
    core = WorkerCore(settings, signer, clock=lambda: 100.0)
    readings = [Reading(f"d{i}", (1.0, 2.0), 3.0) for i in range(n_devices)]
    core.on_readings([(encode_readings(readings), 0, 0)])
    return PipelineState(
        settings, core, MetaAggregator(settings, signer), Verifier([signer.public_key]), "w", None
    )


def test_the_stats_line_does_not_grow_with_the_fleet() -> None:
    # Prepare
    small, large = state_with_devices(2), state_with_devices(200)

    # Execute
    small_line, large_line = json.dumps(small.stats()), json.dumps(large.stats())

    # Assert: the same keys, totals only; the per-device counts are still there for who needs them
    assert small.stats().keys() == large.stats().keys()
    assert "device_readings" not in large.stats()
    assert large.stats()["readings"] == 200 and large.stats()["devices"] == 200
    assert abs(len(large_line) - len(small_line)) <= 10  # digits of the counters only
    assert large.device_readings() == {f"d{i}": 1 for i in sorted(range(200), key=str)}


def test_metrics_show_guard_rejections_checkpoints_and_duplicates() -> None:
    # Prepare
    stats = {"rejected": 3, "checkpoints_written": 12, "checkpoints_restored": 4, "duplicates_skipped": 250}
    reading = MetricsReading("w1", "app", stats=stats)

    # Execute
    samples = [
        s for f in text_string_to_metric_families(render(reading, top_n=3).decode()) for s in f.samples
    ]

    # Assert
    values = {s.name: s.value for s in samples if s.name.endswith("_total")}
    assert values["metastream_guard_rejections_total"] == 3
    assert values["metastream_checkpoints_written_total"] == 12
    assert values["metastream_checkpoints_restored_total"] == 4
    assert values["metastream_duplicates_skipped_total"] == 250
