"""ONNX export: onnxruntime runs the exported graph and predicts what the edge predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from connectors.edge import EdgeState
from connectors.signing import Signer, Verifier
from learners import LearnerConfig
from learners.config import Task
from learners.evaluation.synthetic import make_fleet_stream
from learners.fleet import FleetLearner
from pipeline.tools.cli import main
from pipeline.tools.export_onnx import build_onnx
from wire.models import decode_model

N_FEATURES = 5


def trained(task: Task, hidden: tuple[int, ...]) -> tuple[FleetLearner, np.ndarray]:
    """A fleet that learned a seeded stream of 4 devices, and held-back readings of their scale."""
    s = make_fleet_stream(
        n_devices=4, n_readings=2_000, n_features=N_FEATURES, task=task, n_classes=3, seed=7
    )
    cfg = LearnerConfig(n_features=N_FEATURES, task=task, n_classes=3, hidden=hidden)
    fleet = FleetLearner(cfg)
    for start in range(0, 1_800, 100):
        stop = start + 100
        fleet.learn_predict(s.device_ids[start:stop], s.x[start:stop], s.y[start:stop])
    return fleet, s.x[1_800:]


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"x": x.astype(np.float64)}), strict=True))


@pytest.mark.parametrize(
    ("task", "hidden"), [("regression", (32,)), ("regression", (16, 8)), ("classification", (16, 8))]
)
def test_onnxruntime_predicts_what_the_edge_predicts(task: Task, hidden: tuple[int, ...]) -> None:
    # Prepare: a verified model on an edge, and its payload's tensors
    fleet, x = trained(task, hidden)
    signer = Signer.generate()
    device = "dev-0001"
    state = EdgeState(Verifier([signer.public_key]), [device])
    envelope = signer.seal(fleet.export(device, 3))
    assert state.offer(device, envelope).accepted
    tensors, header = decode_model(Verifier([signer.public_key]).open(envelope))

    # Execute
    model = build_onnx({k: v.numpy() for k, v in tensors.items()}, header)
    got = run_onnx(model, x)

    # Assert
    expected = state.predict(device, x)
    assert got["prediction"].shape == expected.shape == (len(x),)
    if task == "regression":
        np.testing.assert_allclose(got["prediction"], expected, rtol=0, atol=1e-5)
        assert sorted(got) == ["prediction"]
    else:
        np.testing.assert_array_equal(got["prediction"], expected)
        assert len(set(expected.tolist())) > 1  # the check would be weak on a constant classifier
        probabilities = got["probabilities"]
        assert probabilities.shape == (len(x), 3)
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(probabilities.argmax(1), expected)
    assert {p.key: p.value for p in model.metadata_props}["model_version"] == "3"


def test_export_from_a_model_file(tmp_path: Path) -> None:
    # Prepare: a signed envelope saved to a file, and the worker's public key
    fleet, x = trained("regression", (32,))
    signer = Signer.generate()
    signer.save(tmp_path / "w.pem", tmp_path / "w.pub.pem")
    (tmp_path / "model.bin").write_bytes(signer.seal(fleet.export("dev-0002", 5)))
    out = tmp_path / "model.onnx"

    # Execute
    code = main(
        [
            "export",
            "--model-file",
            str(tmp_path / "model.bin"),
            "--trusted-key",
            str(tmp_path / "w.pub.pem"),
            "--format",
            "onnx",
            "--out",
            str(out),
        ]
    )

    # Assert
    assert code == 0
    state = EdgeState(Verifier([signer.public_key]), ["dev-0002"])
    state.offer("dev-0002", (tmp_path / "model.bin").read_bytes())
    got = run_onnx(onnx.load(str(out)), x)["prediction"]
    np.testing.assert_allclose(got, state.predict("dev-0002", x), rtol=0, atol=1e-5)


def test_export_refuses_a_model_signed_by_an_untrusted_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    fleet, _ = trained("regression", (32,))
    Signer.generate().save(tmp_path / "w.pem", tmp_path / "w.pub.pem")
    (tmp_path / "model.bin").write_bytes(Signer.generate().seal(fleet.export("dev-0002", 5)))
    argv = ["export", "--model-file", str(tmp_path / "model.bin"), "--device", "dev-0002"]

    # Execute
    code = main([*argv, "--trusted-key", str(tmp_path / "w.pub.pem"), "--out", str(tmp_path / "m.onnx")])

    # Assert
    assert code == 2
    assert "model refused: unknown_key" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
