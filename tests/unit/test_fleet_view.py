"""FleetView: what the dashboard and /metrics keep of a worker's history, and that it stays bounded."""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connectors.settings import Settings
from connectors.signing import Signer
from learners.evaluation.synthetic import make_fleet_stream
from pipeline.fleet_view import FleetView, Histogram, fleet_error_summary, worst_devices
from pipeline.metrics import MetricsReading, render
from pipeline.worker_core import WorkerCore
from wire.events import AdaptationResult, Adapted, Drift, Evicted
from wire.messages import Contribution, ModelUpdate
from wire.readings import DeadLetter, Reading, encode_readings

S = Settings()


def model(cause: str, detected: float, published: float) -> ModelUpdate:
    return ModelUpdate("d", 1, cause, detected_at=detected, published_at=published, payload=b"payload")


def letter(reason: str) -> DeadLetter:
    return DeadLetter(reason, detail="", original_b64="")


def test_events_feed_timeline_results_and_latency() -> None:
    # Prepare
    view = FleetView(S)
    batch = [
        Drift("d1", ts=100.0, meta_version=3),
        model("drift", detected=100.0, published=100.4),
        Adapted("d1", ts=100.4, model_version=2, cause="drift", meta_version=3),
        AdaptationResult("d1", model_version=2, error_before=0.9, error_after=0.3, readings=30),
        letter("non_finite"),
        letter("non_finite"),
        Evicted(devices=1, resident=1, stored=1, max_devices=1, ts=100.5),  # worker-wide: ignored
        Contribution("w", b"deltas"),  # not watched: ignored
    ]

    # Execute
    view.observe(batch, now=101.0)

    # Assert
    assert [(e["t"], e["type"], e["device_id"]) for e in view.timeline] == [
        (100.0, "drift", "d1"),
        (100.4, "adapted", "d1"),
    ]
    assert view.timeline[1]["model_version"] == 2 and view.timeline[1]["cause"] == "drift"
    assert list(view.results) == [
        {"t": 101.0, "device_id": "d1", "model_version": 2, "error_before": 0.9, "error_after": 0.3}
    ]
    assert view.latency["drift"].count == 1
    assert view.latency["drift"].sum == pytest.approx(0.4)
    assert view.latency["drift"].cumulative()[5:8] == [0, 1, 1]  # counted in the (0.25, 0.5] bucket
    assert dict(view.dead_letters) == {"non_finite": 2}
    assert dict(view.adaptations) == {"drift": 1}
    assert list(view.curves) == ["d1"]


def test_history_stays_bounded() -> None:
    # Prepare
    view = FleetView(S, max_events=10, max_meta=5, max_results=4, followed=3, curve_points=6)

    # Execute: far more of everything than the view keeps.
    for i in range(200):
        view.observe(
            [
                Drift(f"d{i}", ts=float(i), meta_version=0),
                AdaptationResult(f"d{i}", model_version=1, error_before=1.0, error_after=0.5, readings=30),
                letter(f"reason-{i}"),
                model(f"cause-{i}", 0.0, 1.0),
            ],
            now=float(i),
        )
        view.on_meta(i, now=float(i))
        view.sample(float(i), readings=10 * i, errors={f"d{j}": 1.0 for j in range(i + 1)})

    # Assert
    assert len(view.timeline) == 10 and view.timeline[-1]["device_id"] == "d199"
    assert [v for _, v in view.meta] == [195, 196, 197, 198, 199]
    assert len(view.results) == 4
    assert list(view.curves) == ["d197", "d198", "d199"]  # the most recently drifted
    assert all(len(c) <= 6 for c in view.curves.values())
    assert len(view.fleet_curve) == 6 and len(view.throughput) == 6
    assert len(view.dead_letters) == 33 and view.dead_letters["other"] == 200 - 32  # 32 reasons + other
    assert len(view.latency) == 33 and view.latency["other"].count == 200 - 32
    assert view.readings_per_s() == pytest.approx(10.0)


def test_meta_history_records_changes_only() -> None:
    view = FleetView(S)
    for t, v in [(1.0, 0), (2.0, 0), (3.0, 1), (4.0, 1), (5.0, 3)]:
        view.on_meta(v, now=t)
    assert list(view.meta) == [(1.0, 0), (3.0, 1), (5.0, 3)]


def test_readings_rate_over_the_window() -> None:
    # Prepare: 100 readings/s for 20 s, then 300/s for 10 s; the window is 10 s.
    view = FleetView(S, rate_window_s=10.0)
    n = 0
    for t in range(31):
        view.sample(float(t), readings=n, errors={})
        n += 100 if t < 20 else 300

    # Assert
    assert view.readings_per_s() == pytest.approx(300.0)


def test_snapshot_is_strict_json() -> None:
    # Prepare: a NaN error (a device without readings yet) and a NaN in an event.
    view = FleetView(S)
    view.observe(
        [AdaptationResult("d1", model_version=1, error_before=math.nan, error_after=0.2, readings=30)], 5.0
    )
    errors = {"d1": 0.2, "d2": math.nan, "d3": 0.7}

    # Execute
    snap = view.snapshot(errors, {"d3": 4}, {"readings": 9}, now=6.0, top_n=1)

    # Assert: serialises without NaN; worst device first with its version.
    text = json.dumps(snap, allow_nan=False)
    assert json.loads(text)["devices"] == [{"device_id": "d3", "error": 0.7, "model_version": 4}]
    assert snap["results"][0]["error_before"] is None
    assert snap["fleet"] == {
        "devices": 3,
        "with_error": 2,
        "mean": pytest.approx(0.45),
        "p50": 0.2,
        "p90": 0.7,
        "max": 0.7,
    }
    assert snap["stats"] == {"readings": 9, "readings_per_s": 0.0}


def test_worst_devices_and_summary_ignore_devices_without_error() -> None:
    errors = {"a": 0.1, "b": math.nan, "c": 0.3, "d": 0.3}
    assert [(r.device_id, r.model_version) for r in worst_devices(errors, {"c": 2}, 10)] == [
        ("c", 2),
        ("d", 0),
        ("a", 0),
    ]
    assert fleet_error_summary(errors)["with_error"] == 3


def test_histogram_refuses_unordered_bounds() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram((1.0, 0.5))


@pytest.mark.slow  # a few real adaptations: ~10 s on a busy 2-core machine
def test_worker_core_feeds_the_view() -> None:
    # Prepare: a seeded fleet with abrupt drifts through a real WorkerCore, on an injected clock.
    settings = Settings(n_features=4, micro_batch=200)
    stream = make_fleet_stream(
        n_devices=4, n_readings=4000, n_features=4, gradual_share=0.0, late_joiners=0.0, seed=3
    )
    core = WorkerCore(settings, Signer.generate(), clock=lambda: 50.0)
    view = FleetView(settings)
    readings = [
        Reading(d, tuple(x), float(y))
        for d, x, y in zip(stream.device_ids, stream.x.tolist(), stream.y, strict=True)
    ]
    messages = [(encode_readings(readings[i : i + 50]), 0, i // 50) for i in range(0, len(readings), 50)]

    # Execute: gateway messages of 50 readings, 4 per core call.
    for start in range(0, len(messages), 4):
        view.observe(core.on_readings(messages[start : start + 4]), now=60.0)
    errors = core.device_errors()

    # Assert: the view counted what the core counted.
    stats = core.stats()
    assert sum(1 for e in view.timeline if e["type"] == "drift") == stats["drifts"] > 0
    assert sum(view.adaptations.values()) == stats["adaptations"]
    assert view.adaptations["new_device"] == 4
    assert sorted(errors) == sorted(set(stream.device_ids))
    assert all(math.isfinite(e) and e >= 0 for e in errors.values())
    assert core.model_versions() == {
        d: sum(1 for e in view.timeline if e["type"] == "adapted" and e["device_id"] == d) for d in errors
    }
    # Injected clock: detected and published in the same instant.
    assert view.latency["new_device"].sum == 0.0


def test_render_parses_as_prometheus_text() -> None:
    # Prepare
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.5, 2.0):
        h.observe(v)
    errors = {f"d{i}": float(i) for i in range(20)}
    reading = MetricsReading(
        "w1",
        "app",
        stats={"readings": 1234, "drifts": 5, "meta_version": 7, "uptime_s": 3.5},
        errors=errors,
        readings_per_s=250.0,
        lag={("r", 0): 3, ("r", 1): 0},
        dead_letters={"malformed_json": 2},
        adaptations={"drift": 4, "new_device": 20},
        latency={"drift": h},
    )

    # Execute
    families = list(text_string_to_metric_families(render(reading, top_n=3).decode()))
    samples = [s for f in families for s in f.samples]

    # Assert
    def value(name: str, **labels: str) -> float:
        return next(s.value for s in samples if s.labels == labels and s.name == name)

    assert value("metastream_readings_total") == 1234
    assert value("metastream_readings_per_second") == 250
    assert value("metastream_meta_version") == 7
    assert value("metastream_consumer_lag", topic="r", partition="0") == 3
    assert value("metastream_dead_letters_total", reason="malformed_json") == 2
    assert value("metastream_adaptations_total", cause="new_device") == 20
    assert {s.labels["device"] for s in samples if s.name == "metastream_device_error"} == {
        "d19",
        "d18",
        "d17",
    }
    assert value("metastream_fleet_error", stat="max") == 19
    assert value("metastream_devices") == 20
    buckets = {
        s.labels["le"]: s.value for s in samples if s.name == "metastream_publish_latency_seconds_bucket"
    }
    assert buckets == {"0.1": 1, "1.0": 2, "+Inf": 3}
    assert value("metastream_publish_latency_seconds_count", cause="drift") == 3
