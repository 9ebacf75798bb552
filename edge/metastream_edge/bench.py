"""What the device costs: memory after start, prediction and adaptation times (``python -m``).

Run in the device's own environment by ``metastream bench --edge``::

    python -m metastream_edge.bench --model model.signed --trusted-key worker.pub.pem

It verifies and loads the signed model, predicts one reading (the parent
process times start → that line), then reports its resident memory and the
median times of a one-reading prediction and of a ``k``-step adaptation, as
one JSON line.  No broker is involved.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# A device process follows its model with the Kafka client: count it in the memory figure.
import metastream_edge.federated  # noqa: F401
from metastream_edge.mlp import adapt
from metastream_edge.model import EdgeModel
from metastream_edge.signing import Verifier


def resident_mb() -> float:
    """This process's resident memory (``VmRSS`` from ``/proc``), in MB (10⁶ bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmRSS in /proc/self/status")


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls (after a few warm-up calls)."""
    for _ in range(min(repeat, 20)):
        fn()
    times = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return float(np.median(times))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print one JSON line (after a ``first prediction`` line)."""
    p = argparse.ArgumentParser(prog="python -m metastream_edge.bench")
    p.add_argument("--model", required=True, help="a signed model envelope (file)")
    p.add_argument("--trusted-key", required=True, help="PEM public key of the worker")
    p.add_argument("--predictions", type=int, default=20_000)
    p.add_argument("--adaptations", type=int, default=500)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--readings", type=int, default=32)
    args = p.parse_args(argv)

    verifier = Verifier.from_files(args.trusted_key)
    model = EdgeModel.from_payload(verifier.open(Path(args.model).read_bytes()))
    rng = np.random.default_rng(0)
    one = rng.normal(size=(1, model.header.n_features))
    print(f"first prediction {float(model.predict(one)[0]):.6g}", flush=True)
    rss = resident_mb()

    x = rng.normal(size=(args.readings, model.header.n_features)).astype(np.float32)
    y = rng.normal(size=args.readings).astype(np.float32)
    predict_s = median_seconds(lambda: model.predict(one), args.predictions)
    adapt_s = median_seconds(
        lambda: adapt(model.header.task, model.params, x, y, None, args.steps, 0.2), args.adaptations
    )
    result = {
        "rss_after_start_mb": round(rss, 1),
        "predict_us_median": round(predict_s * 1e6, 2),
        "adapt_ms_median": round(adapt_s * 1e3, 3),
        "adapt_steps": args.steps,
        "adapt_readings": args.readings,
        "architecture": [model.header.n_features, *model.header.hidden, model.header.n_outputs],
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
