"""A device's whole life, run by tests/integration/test_edge_package.py in a venv WITHOUT torch.

Only ``metastream_edge`` and numpy are imported.  Given a broker, topics and
the worker's public key (a JSON file as the only argument), it receives and
verifies its model and θ, predicts, learns on its own readings until a drift
and adapts from θ, then runs as a federated device whose deltas must move θ.
It saves and reloads its state, checks that torch, faust and river were
never imported, and prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def main(config_path: str) -> dict[str, Any]:
    from metastream_edge.learner import EdgeConfig
    from metastream_edge.signing import Verifier
    from metastream_edge.subscriber import Topics

    c = json.loads(Path(config_path).read_text())
    topics = Topics(c["topic_models"], c["topic_meta"], c["topic_deltas"])
    verifier = Verifier.from_files(c["trusted_key"])
    cfg = EdgeConfig(n_features=c["n_features"], adapt_after=16, buffer_size=32, cooldown=50, drift_warmup=40)
    out: dict[str, Any] = {}
    model, theta, rng = _receive_model_and_theta(c, verifier, topics, out)
    w = _learn_through_a_drift(c, cfg, model, theta, rng, out)
    _run_federated(c, verifier, cfg, topics, rng, w, out)

    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "faust", "river"))
    assert not heavy, f"imported: {heavy[:10]}"
    out["heavy_modules"] = heavy
    return out


def _receive_model_and_theta(
    c: dict[str, Any], verifier: Any, topics: Any, out: dict[str, Any]
) -> tuple[Any, Any, Any]:
    """1. Receive and verify the device's model and θ from the worker; predict."""
    import numpy as np

    from metastream_edge.state import META_KEY
    from metastream_edge.subscriber import EdgeSubscriber

    started = time.monotonic()
    with EdgeSubscriber(c["bootstrap"], [c["device"]], verifier, topics, follow_meta=True) as sub:
        deadline = time.monotonic() + 120
        while sub.state.version(c["device"]) is None or sub.state.theta is None:
            assert time.monotonic() < deadline, f"no model or θ: {sub.state.summary()}"
            sub.poll_once(500)
        rng = np.random.default_rng(11)
        x = rng.normal(size=(5, c["n_features"]))
        pred = sub.predict(c["device"], x)
        out["first_prediction_s"] = time.monotonic() - started
        out["model_version"] = sub.state.version(c["device"])
        out["theta_version"] = sub.state.version(META_KEY)
        out["predictions_finite"] = bool(np.isfinite(pred).all())
        out["summary"] = sub.state.summary()
        model, theta = sub.state.model(c["device"]), sub.state.theta
    assert model is not None and theta is not None
    return model, theta, rng


def _learn_through_a_drift(
    c: dict[str, Any], cfg: Any, model: Any, theta: Any, rng: Any, out: dict[str, Any]
) -> Any:
    """2. Learn on the device: its relation flips after 400 readings; the detector must notice and adapt."""
    import numpy as np

    from metastream_edge.learner import OnDeviceLearner
    from metastream_edge.persist import load_state, save_state

    learner = OnDeviceLearner(cfg, theta[0])
    learner.use_model(model)
    w = rng.normal(size=c["n_features"])
    xs = rng.normal(size=(800, c["n_features"]))
    ys = np.where(np.arange(800) < 400, 1.0, -1.0) * (xs @ w) * 3 + 2
    errors = []
    for i in range(0, 800, 4):
        step = learner.learn(xs[i : i + 4], ys[i : i + 4])
        errors.append(float(np.abs(step.y_pred - ys[i : i + 4]).mean()))
    out["drifts"], out["adaptations"] = learner.n_drifts, learner.n_adaptations
    out["error_just_after_drift"] = float(np.mean(errors[100:110]))
    out["error_at_end"] = float(np.mean(errors[-20:]))
    save_state(learner, Path(c["work"]) / "device.state")
    restored = load_state(Path(c["work"]) / "device.state")
    assert restored is not None
    out["restored_predicts_alike"] = bool(np.array_equal(restored.predict(xs[:8]), learner.predict(xs[:8])))
    return w


def _run_federated(
    c: dict[str, Any], verifier: Any, cfg: Any, topics: Any, rng: Any, w: Any, out: dict[str, Any]
) -> None:
    """3. Federated: readings stay here; φ − θ goes to the deltas topic and θ moves."""
    from metastream_edge.federated import FederatedClient
    from metastream_edge.signing import Signer

    fed = FederatedClient(
        c["bootstrap"],
        c["fed_device"],
        verifier,
        cfg,
        topics,
        signer=Signer.from_file(c["fed_key"]),
        state_path=Path(c["work"]) / "fed.state",
    )
    with fed:
        deadline = time.monotonic() + 60
        while fed.theta_version is None:
            assert time.monotonic() < deadline, "θ never reached the federated client"
            fed.step()
        before = fed.theta_version
        fx = rng.normal(size=(64, c["n_features"]))
        fed.step(fx, fx @ w + 1)
        deadline = time.monotonic() + 60
        while (fed.theta_version or 0) <= before:
            assert time.monotonic() < deadline, "θ did not move after the device's delta"
            fed.step()
        out["fed_sent"], out["theta_before"], out["theta_after"] = fed.sent, before, fed.theta_version
    out["fed_state_saved"] = (Path(c["work"]) / "fed.state").exists()


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
