"""``metastream bench`` rows for large fleets and for the meta aggregator.

- **Fleet size**: the full-work learner (:meth:`FleetLearner.learn_predict`,
  no meta-updates) on ``N`` devices, each in a fresh process so its peak
  resident memory is its own.  Every device first gets ``adapt_after + 1``
  readings (it joins and has its first adaptation), then the timed part
  gives every device ``TIMED_PER_DEVICE`` more.  Readings come from a seeded
  generator batch by batch (each device a linear task of its own, devices
  in a shuffled round-robin), so the stream itself takes no memory.
- **Meta aggregator**: :class:`pipeline.worker_core.MetaAggregator` applying
  signed contributions of one device each (verify, decode, bound, check θ on
  held-back readings of a warmed 1,000-device fleet, sign the new θ).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from learners.config import LearnerConfig
from learners.fleet import FleetLearner

BATCH = 1000
TIMED_PER_DEVICE = 4
FEATURES = 8


def fleet_batches(
    n_devices: int, per_device: int, seed: int
) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """``per_device`` readings of every one of ``n_devices`` in batches of :data:`BATCH`.

    Examples
    --------
    >>> batches = list(fleet_batches(3, 2, seed=0))
    >>> [len(ids) for ids, _, _ in batches], sorted(batches[0][0])
    ([6], ['dev-0', 'dev-0', 'dev-1', 'dev-1', 'dev-2', 'dev-2'])
    """
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n_devices, FEATURES))
    ids = np.array([f"dev-{i}" for i in range(n_devices)], dtype=object)
    order = np.concatenate([rng.permutation(n_devices) for _ in range(per_device)])
    for a in range(0, len(order), BATCH):
        dev = order[a : a + BATCH]
        x = rng.normal(size=(len(dev), FEATURES))
        y = np.einsum("nf,nf->n", x, weights[dev]) + 0.1 * rng.normal(size=len(dev))
        yield ids[dev].tolist(), x, y


def _rss_mb() -> float:
    """This process's current resident memory, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


def measure_fleet(n_devices: int, seed: int = 0) -> dict[str, Any]:
    """Readings/s of the full-work learner on ``n_devices``, and memory (run in a fresh process)."""
    torch.set_num_threads(1)
    cfg = LearnerConfig(n_features=FEATURES, meta_every=10**12)
    before = _rss_mb()
    fleet = FleetLearner(cfg, init="reptile")
    for ids, x, y in fleet_batches(n_devices, cfg.adapt_after + 1, seed):
        fleet.learn_predict(ids, x, y)
    n = 0
    start = time.perf_counter()
    for ids, x, y in fleet_batches(n_devices, TIMED_PER_DEVICE, seed + 1):
        fleet.learn_predict(ids, x, y)
        n += len(ids)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux
    return {
        "devices": n_devices,
        "readings": n,
        "readings_per_s": round(n / elapsed, 1),
        "peak_rss_mb": round(peak, 1),
        "rss_before_learner_mb": round(before, 1),
    }


def bench_fleet_sizes(sizes: list[int]) -> list[dict[str, Any]]:
    """One row per fleet size, each measured in its own process."""
    rows = []
    for n in sizes:
        code = f"import json, pipeline.tools.bench_scale as b; print(json.dumps(b.measure_fleet({int(n)})))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        rows.append({"bench": f"vectorised full work, {n:,} devices", **json.loads(out.splitlines()[-1])})
    return rows


def bench_meta_aggregator(n_deltas: int, checked: bool = True, seed: int = 0) -> dict[str, Any]:
    """Contributions/s (one device each) through :meth:`MetaAggregator.on_delta`.

    With ``checked`` the aggregator has a warmed fleet, as inside a worker, and
    checks every candidate θ on its held-back readings; without, it checks
    finiteness only (an aggregator that has no fleet).
    """
    from connectors.settings import Settings
    from connectors.signing import Signer
    from pipeline.worker_core import MetaAggregator
    from wire.models import DeltaHeader, encode_deltas

    settings = Settings(n_features=FEATURES)
    cfg = settings.learner_config()
    fleet = FleetLearner(cfg, init="reptile", local_meta=False)
    for ids, x, y in fleet_batches(1000, cfg.adapt_after + 1, seed):
        fleet.learn_predict(ids, x, y)
    signer = Signer.generate()
    agg = MetaAggregator(settings, signer, fleet=fleet if checked else None, clock=lambda: 0.0)
    gen = torch.Generator().manual_seed(seed)
    messages = [
        signer.seal(
            encode_deltas(
                0.01 * torch.randn(1, agg.n_params, generator=gen),
                torch.tensor([20.0]),
                DeltaHeader(f"worker:bench-{i}", 0, agg.n_params),
            )
        )
        for i in range(n_deltas)
    ]
    start = time.perf_counter()
    for m in messages:
        agg.on_delta(m)
    elapsed = time.perf_counter() - start
    return {
        "bench": "meta aggregator: one-device contributions, "
        + ("θ checked on held-back readings" if checked else "finiteness check only"),
        "deltas": n_deltas,
        "deltas_per_s": round(n_deltas / elapsed, 1),
        "versions": agg.version,
        "refused": agg.rejected + agg.counts["theta_refused"],
    }


def run_scale_bench(sizes: list[int], n_deltas: int) -> list[dict[str, Any]]:
    """The fleet-size rows, then the meta aggregator's (checked, and unchecked), in one run."""
    rows = bench_fleet_sizes(sizes)
    rows += [bench_meta_aggregator(n_deltas, checked=c) for c in (True, False)]
    return rows


def print_scale(rows: list[dict[str, Any]]) -> None:
    """The rows as a table."""
    for r in rows:
        if "deltas_per_s" in r:
            print(f"{r['bench']:<66}  {r['deltas_per_s']:>12,.0f} deltas/s")
        else:
            print(
                f"{r['bench']:<66}  {r['readings_per_s']:>12,.0f} readings/s"
                f"  peak RSS {r['peak_rss_mb']:,.0f} MB"
                f" ({r['rss_before_learner_mb']:,.0f} MB before the learner)"
            )


__all__ = [
    "bench_fleet_sizes",
    "bench_meta_aggregator",
    "fleet_batches",
    "measure_fleet",
    "print_scale",
    "run_scale_bench",
]
