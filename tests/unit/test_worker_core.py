"""The worker's and meta agent's state machines, without a broker."""

from __future__ import annotations

import itertools
import json

import numpy as np
import torch

from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from learners.edge_model import EdgeModel
from learners.evaluation.synthetic import FleetStream, make_fleet_stream
from learners.fleet import FleetLearner
from pipeline.outgoing import to_records
from pipeline.worker_core import MetaAggregator, WorkerCore
from wire.readings import DeadLetter, Reading, encode_readings

SETTINGS = Settings(n_features=8, micro_batch=100, learner={"meta_every": 200})


def readings_of(s: FleetStream) -> list[Reading]:
    return [Reading(d, tuple(x), float(y)) for d, x, y in zip(s.device_ids, s.x.tolist(), s.y, strict=True)]


def stream_messages(n_devices: int = 10, n_readings: int = 4000, gateway: int = 20) -> list[bytes]:
    s = make_fleet_stream(n_devices=n_devices, n_readings=n_readings, late_joiners=0.0, seed=3)
    readings = readings_of(s)
    return [encode_readings(readings[i : i + gateway]) for i in range(0, len(readings), gateway)]


def test_bad_input_goes_to_dead_letters_with_reason_and_original_bytes() -> None:
    # Prepare
    core = WorkerCore(SETTINGS, Signer.generate())
    bad = [
        b'{"v":1,"device_id":"d","x":[1,2',  # truncated JSON
        b'{"v":1,"device_id":"d","x":"abc","y":1}',  # wrong type
        b'{"v":1,"device_id":"d","x":[NaN,1,1,1,1,1,1,1],"y":1}',
        b'{"v":1,"device_id":"d","x":[1,2],"y":1}',  # wrong feature count
        b'{"v":1,"device_id":"d","x":[1e300,1,1,1,1,1,1,1],"y":1}',
        b'{"v":9,"device_id":"d","x":[1,1,1,1,1,1,1,1],"y":1}',
        b'{"v":1,"device_id":"","x":[1,1,1,1,1,1,1,1],"y":1}',
        b"x" * 1_000_001,
    ]
    # Execute
    out = to_records(SETTINGS, core.on_readings([(b, 0, i) for i, b in enumerate(bad)]))
    # Assert
    letters = [DeadLetter.decode(o.value) for o in out]
    assert [d.reason for d in letters] == [
        "malformed_json",
        "bad_features",
        "non_finite",
        "wrong_feature_count",
        "out_of_range",
        "unknown_schema_version",
        "bad_device_id",
        "oversized",
    ]
    assert [d.original for d in letters] == bad
    assert [d.offset for d in letters] == list(range(8))
    assert core.stats()["readings"] == 0 and len(core.fleet.devices) == 0  # no model touched


def test_models_are_signed_versioned_and_run_at_the_edge() -> None:
    # Prepare
    signer = Signer.generate()
    core = WorkerCore(SETTINGS, signer, clock=lambda: 5.0)
    # Execute
    out = [o for m in stream_messages() for o in to_records(SETTINGS, core.on_readings([(m, 0, 0)]))]
    # Assert
    models = [o for o in out if o.topic == SETTINGS.topic_models]
    assert models, "new devices must get a model"
    verifier = Verifier([signer.public_key])
    last: dict[str, int] = {}
    for o in models:
        edge = EdgeModel.from_payload(verifier.open(o.value))
        device = o.key.decode() if o.key else ""
        assert edge.header.device_id == device
        assert edge.header.model_version == last.get(device, 0) + 1  # in order, none lost
        last[device] = edge.header.model_version
        assert np.isfinite(edge.predict(np.zeros((1, 8)))).all()
    assert core.stats()["drifts"] >= 1
    assert any(o.topic == SETTINGS.topic_events for o in out)


def test_meta_loop_worker_to_aggregator_and_back() -> None:
    # Prepare
    signer = Signer.generate()
    core = WorkerCore(SETTINGS, signer)
    agg = MetaAggregator(SETTINGS, signer)
    theta0 = {k: v.clone() for k, v in core.fleet.theta.items()}
    # Execute: worker contributions → aggregator → θ versions → worker
    for m in stream_messages():
        for o in to_records(SETTINGS, core.on_readings([(m, 0, 0)])):
            if o.topic == SETTINGS.topic_deltas:
                for theta in to_records(SETTINGS, agg.on_delta(o.value)):
                    core.on_meta(theta.value)
    # Assert
    assert agg.version >= 10
    assert core.fleet.meta_version == agg.version
    assert any(not torch.equal(theta0[k], core.fleet.theta[k]) for k in theta0)


def test_worker_refuses_theta_it_cannot_trust() -> None:
    # Prepare
    core = WorkerCore(SETTINGS, Signer.generate())
    foreign = Signer.generate()
    forged = MetaAggregator(SETTINGS, foreign)
    n = forged.n_params
    from wire.models import DeltaHeader, encode_deltas

    delta = encode_deltas(torch.ones(1, n), torch.ones(1), DeltaHeader("worker:x", 0, n))
    (theta,) = to_records(SETTINGS, forged.on_delta(foreign.seal(delta)))
    # Execute / Assert
    assert core.on_meta(theta.value) is False
    assert core.on_meta(theta.value[80:]) is False  # stripped signature
    assert core.fleet.meta_version == 0 and core.stats()["meta_refused"] == 2


def test_adaptations_report_error_before_and_after() -> None:
    # Prepare
    core = WorkerCore(SETTINGS, Signer.generate())
    # Execute
    out = [o for m in stream_messages() for o in to_records(SETTINGS, core.on_readings([(m, 0, 0)]))]
    # Assert

    results = [json.loads(o.value) for o in out if b'"adaptation_result"' in o.value]
    assert results
    for r in results:
        assert r["error_before"] >= 0 and r["error_after"] >= 0 and r["readings"] == 30


def test_the_worker_detects_exactly_the_drifts_of_an_offline_fleet_fed_the_same_batches() -> None:
    # Prepare: the end-to-end test's stream, in the batches a worker starting behind a backlog
    # takes (a few large ones, then the producer's pace); a fleet with θ frozen, as the worker's
    # is until the meta agent answers
    s = make_fleet_stream(n_devices=40, n_readings=20_000, late_joiners=0.3, seed=1)
    settings = Settings(n_features=8, micro_batch=1000)
    sizes = [600, 1000, 1000, 1000] + [200] * 82
    edges = np.cumsum([0, *sizes])
    core = WorkerCore(settings, Signer.generate())
    fleet = FleetLearner(settings.learner_config(), init="reptile", local_meta=False)
    readings = readings_of(s)
    # Execute
    worker_drifts: list[str] = []
    fleet_drifts: list[str] = []
    for a, b in itertools.pairwise(edges.tolist()):
        out = to_records(settings, core.on_readings([(encode_readings(readings[a:b]), 0, a)]))
        events = [json.loads(o.value) for o in out if o.topic == settings.topic_events]
        worker_drifts += [e["device_id"] for e in events if e["type"] == "drift"]
        fleet_drifts += fleet.learn_predict(s.device_ids[a:b], s.x[a:b], s.y[a:b]).drifted
    # Assert: the same drifts, in the same order; a drift the worker misses, so does the replay
    assert worker_drifts == fleet_drifts
    assert len(set(worker_drifts)) >= 30


def test_dead_letters_are_keyed_by_the_device_they_name() -> None:
    # Prepare
    core = WorkerCore(SETTINGS, Signer.generate())
    huge = "9" * 5000
    bad = [
        ('{"v":1,"device_id":"dev-big","x":[' + huge + ',1,1,1,1,1,1,1],"y":1}').encode(),
        b'{"v":1,"device_id":"dev-cut","x":[1,2',
        b"\xff\xfe",
    ]
    good = encode_readings([Reading("dev-ok", (1.0,) * 8, 1.0)])
    # Execute
    out = to_records(SETTINGS, core.on_readings([(b, 0, i) for i, b in enumerate([bad[0], good, *bad[1:]])]))
    # Assert: the 5000-digit integer is one dead letter, the good reading is learned
    letters = [(o.key, DeadLetter.decode(o.value)) for o in out if o.topic == SETTINGS.topic_deadletter]
    assert [(k, d.reason, d.device_id) for k, d in letters] == [
        (b"dev-big", "number_too_large", "dev-big"),
        (b"dev-cut", "malformed_json", "dev-cut"),
        (None, "malformed_json", None),
    ]
    assert core.stats()["readings"] == 1 and dict(core.device_readings) == {"dev-ok": 1}
