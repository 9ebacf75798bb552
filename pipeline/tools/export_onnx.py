"""``metastream export --format onnx``: a device's verified model as an ONNX graph.

For devices without Python: any ONNX runtime (C, C++, JavaScript, …) runs
the exported file and gets exactly what :meth:`connectors.edge.EdgeState.predict`
returns.  The graph is built from the model payload's tensors with
``onnx.helper``:

* input ``x``: ``double [n, n_features]``, raw readings;
* normalisation ``(x - norm.x_mean) / norm.x_std`` in double, then float;
* the MLP of :class:`learners.nets.FunctionalNet`: ``Gemm`` (``x @ W.T + b``)
  with ``Relu`` between layers, in float;
* output ``prediction``: ``double [n]``, for regression the output
  de-normalised (``out * norm.y_std + norm.y_mean``, in double), for
  classification the class index (``ArgMax``), as the edge returns it;
  classification also has ``probabilities``: ``float [n, n_classes]`` (softmax).

The model comes from the models topic (the newest one a trusted key signed)
or from an envelope file; either way it passes :class:`~connectors.edge.EdgeState`'s checks first.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from connectors.edge import EdgeState, trusted_verifier
from connectors.settings import Settings
from wire.models import NORM_KEYS, ModelHeader, decode_model

OPSET = 17
"""ONNX opset of the exported graphs: run by onnxruntime ≥ 1.13 and onnxruntime-node/-web alike."""
IR_VERSION = 8
"""The ONNX file-format version that goes with :data:`OPSET` (older runtimes refuse newer ones)."""


def _layers(tensors: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(weight, bias)`` of each Linear layer in order (keys ``<index>.weight`` of the Sequential)."""
    indices = sorted({int(k.split(".")[0]) for k in tensors if k not in NORM_KEYS})
    return [(tensors[f"{i}.weight"], tensors[f"{i}.bias"]) for i in indices]


def build_onnx(tensors: Mapping[str, np.ndarray], header: ModelHeader) -> Any:
    """The ONNX ``ModelProto`` of one decoded model (``tensors`` as numpy arrays).

    Examples
    --------
    >>> import torch
    >>> from learners import LearnerConfig
    >>> from learners.fleet import FleetLearner
    >>> fleet = FleetLearner(LearnerConfig(n_features=2, hidden=(4,)))
    >>> _ = fleet.learn_predict(["d1"], np.ones((1, 2)), np.ones(1))
    >>> tensors, header = decode_model(fleet.export("d1", 1))
    >>> model = build_onnx({k: v.numpy() for k, v in tensors.items()}, header)
    >>> [n.op_type for n in model.graph.node]
    ['Sub', 'Div', 'Cast', 'Gemm', 'Relu', 'Gemm', 'Reshape', 'Cast', 'Mul', 'Add']
    >>> [o.name for o in model.graph.output]
    ['prediction']
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(value), name)

    f = header.n_features
    inits = [
        const("x_mean", tensors["norm.x_mean"].astype(np.float64).reshape(1, f)),
        const("x_std", tensors["norm.x_std"].astype(np.float64).reshape(1, f)),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "x_mean"], ["x_centred"]),
        helper.make_node("Div", ["x_centred", "x_std"], ["x_scaled"]),
        # The edge scales in double, then runs the net in float32: the same here.
        helper.make_node("Cast", ["x_scaled"], ["h0"], to=TensorProto.FLOAT),
    ]
    layers = _layers(tensors)
    h = "h0"
    for i, (w, b) in enumerate(layers):
        inits += [const(f"w{i}", w.astype(np.float32)), const(f"b{i}", b.astype(np.float32))]
        out = f"z{i}" if i < len(layers) - 1 else "logits"
        nodes.append(helper.make_node("Gemm", [h, f"w{i}", f"b{i}"], [out], transB=1))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"h{i + 1}"]))
            h = f"h{i + 1}"
    head_inits, head_nodes, outputs = _output_head(tensors, header)
    inits += head_inits
    nodes += head_nodes
    graph = helper.make_graph(
        nodes,
        f"metastream_{header.task}",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", f])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        producer_name="metastream",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=f"{header.task} model of {header.device_id}, version {header.model_version}",
    )
    model.ir_version = IR_VERSION
    meta = {
        "device_id": header.device_id,
        "model_version": str(header.model_version),
        "parent_meta_version": str(header.parent_meta_version),
        "task": header.task,
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def _output_head(
    tensors: Mapping[str, np.ndarray], header: ModelHeader
) -> tuple[list[Any], list[Any], list[Any]]:
    """Initialisers, nodes and graph outputs that turn ``logits`` into the prediction (and probabilities)."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray) -> Any:
        return numpy_helper.from_array(np.ascontiguousarray(value), name)

    outputs = [helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, ["n"])]
    if header.task == "regression":
        inits = [
            const("flat", np.array([-1], dtype=np.int64)),
            const("y_std", tensors["norm.y_std"].astype(np.float64).reshape(-1)[:1]),
            const("y_mean", tensors["norm.y_mean"].astype(np.float64).reshape(-1)[:1]),
        ]
        nodes = [
            helper.make_node("Reshape", ["logits", "flat"], ["out"]),
            helper.make_node("Cast", ["out"], ["out64"], to=TensorProto.DOUBLE),
            helper.make_node("Mul", ["out64", "y_std"], ["out_scaled"]),
            helper.make_node("Add", ["out_scaled", "y_mean"], ["prediction"]),
        ]
    else:
        inits = []
        nodes = [
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
            helper.make_node("Cast", ["label"], ["prediction"], to=TensorProto.DOUBLE),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ]
        outputs.append(
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", header.n_outputs])
        )
    return inits, nodes, outputs


def verified_envelope(state: EdgeState, device_id: str, envelope: bytes) -> None:
    """Offer ``envelope`` to ``state``; :class:`ValueError` with the reason if it is refused."""
    decision = state.offer(device_id, envelope)
    if not decision.accepted:
        raise ValueError(f"model refused: {decision.reason} ({decision.detail})")


def newest_envelope_from_topic(
    settings: Settings, state: EdgeState, device_id: str, timeout_s: float
) -> bytes:
    """The newest envelope of ``device_id`` on the models topic that ``state`` accepts.

    Reads the device's partition from the beginning to its current end; every
    record of the device is offered to ``state``, so a refused one (say, signed
    by an unknown key) never hides an older good one.
    """
    from kafka import TopicPartition

    from connectors.admin import partition_for
    from connectors.topic_reader import topic_reader

    consumer = topic_reader(settings, "export")
    try:
        partitions = consumer.partitions_for_topic(settings.topic_models)
        if not partitions:
            raise RuntimeError(f"topic {settings.topic_models!r} not found on {settings.bootstrap}")
        tp = TopicPartition(settings.topic_models, partition_for(device_id, len(partitions)))
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        best: bytes | None = None
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not read {settings.topic_models} to its end in {timeout_s:g} s")
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    mine = r.key == device_id.encode() and r.value is not None
                    if mine and state.offer(device_id, r.value).accepted:
                        best = r.value
    finally:
        consumer.close()
    if best is None:
        refusals = ", ".join(f"{k} {v}" for k, v in state.counts.items()) or "no model on the topic"
        raise ValueError(f"no verified model of {device_id!r} on {settings.topic_models} ({refusals})")
    return best


def cmd_export(args: argparse.Namespace) -> int:
    """Handler of ``metastream export``."""
    settings = Settings.load(args.settings, broker=args.broker)
    verifier = trusted_verifier(settings, args.trusted_key or ())
    if args.model_file:
        envelope = Path(args.model_file).read_bytes()
        device = args.device
        if device is None:  # the payload names its device; EdgeState still checks everything
            device = decode_model(verifier.open(envelope))[1].device_id
        state = EdgeState(verifier, [device])
        verified_envelope(state, device, envelope)
    else:
        if args.device is None:
            raise ValueError("--device is required when reading the models topic")
        device = args.device
        state = EdgeState(verifier, [device])
        envelope = newest_envelope_from_topic(settings, state, device, args.timeout)
    out = Path(args.out)
    if args.format == "envelope":
        out.write_bytes(envelope)
    else:
        try:
            import onnx
        except ImportError as exc:
            raise RuntimeError("ONNX export needs the onnx package: pip install 'metastream[onnx]'") from exc
        tensors, header = decode_model(verifier.open(envelope))
        model = build_onnx({k: v.numpy() for k, v in tensors.items()}, header)
        onnx.save(model, str(out))
    print(f"wrote {device} v{state.version(device)} as {args.format} to {out}", file=sys.stderr)
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``export`` sub-command; returns its parser."""
    p = subparsers.add_parser(
        "export", help="write a device's newest verified model as ONNX (or its signed envelope)"
    )
    p.add_argument("--device", help="device id (required with the models topic; checked with --model-file)")
    p.add_argument("--format", choices=["onnx", "envelope"], default="onnx")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--model-file", help="a saved signed model envelope instead of the models topic")
    p.add_argument(
        "--trusted-key", action="append", help="PEM public key to trust; repeatable (default: settings)"
    )
    p.add_argument("--settings", help="JSON settings file (else METASTREAM_* environment and defaults)")
    p.add_argument("--broker", help="kafka://host:port[,host:port]; overrides the settings")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to read the models topic")
    p.set_defaults(func=cmd_export)
    return p
