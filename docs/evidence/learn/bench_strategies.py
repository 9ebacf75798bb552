"""Readings/s of strategies on the core bench's stream and protocol (warm-up, then timed batches).

Rounds of every strategy in turn, medians reported, and each strategy's ratio to
``reptile`` taken within its round, so a slow spell of the shared machine hits all.
Usage: .venv/bin/python docs/evidence/learn/bench_strategies.py DEVICES READINGS ROUNDS STRATEGY...
Torch runs on ``METASTREAM_TORCH_THREADS`` threads (default 1), as under the ``metastream``
command line (``metastream bench``, ``make bench``): on tiny tensors one thread is fastest, and
with more threads than free cores every batched matrix product waits for a descheduled thread.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from learners import LearnerConfig
from learners.evaluation.synthetic import make_fleet_stream
from learners.strategies import make_strategy
from pipeline.tools.bench_core import BATCH


def rate(name: str, devices: int, n: int) -> float:
    stream = make_fleet_stream(n_devices=devices, n_readings=n + 50 * devices, late_joiners=0.0, seed=0)
    learner = make_strategy(name, LearnerConfig(n_features=stream.x.shape[1]))
    ids, x, y = stream.device_ids, stream.x, stream.y
    warm = len(ids) - n
    for a in range(0, warm, BATCH):
        learner.learn_predict(ids[a : a + BATCH], x[a : a + BATCH], y[a : a + BATCH])
    start = time.perf_counter()
    for a in range(warm, warm + n, BATCH):
        learner.learn_predict(ids[a : a + BATCH], x[a : a + BATCH], y[a : a + BATCH])
    return n / (time.perf_counter() - start)


def main() -> None:
    torch.set_num_threads(int(os.environ.get("METASTREAM_TORCH_THREADS", "1")))
    devices, n, rounds, names = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    rates = np.array([[rate(name, devices, n) for name in names] for _ in range(rounds)])
    ratios = rates / rates[:, names.index("reptile") : names.index("reptile") + 1]
    print(f"devices={devices} readings={n} batch={BATCH} rounds={rounds}")
    print(f"{'strategy':<12} {'readings/s (median)':>20} {'x reptile (median)':>20}")
    for i, name in enumerate(names):
        print(f"{name:<12} {np.median(rates[:, i]):>20.1f} {np.median(ratios[:, i]):>20.2f}")


if __name__ == "__main__":
    main()
