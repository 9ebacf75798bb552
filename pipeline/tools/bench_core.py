"""``metastream bench``: learner-core throughput, measured side by side in one run.

Everything runs on the same seeded 1,000-device stream with drift; the learner
is timed after a warm-up of 50 readings per device (every device joined):

- the vectorised fleet learner (stacked weights, ``torch.func``): online
  SGD, drift detection and adaptation, which is the loop's work plus more;
  and the same with Reptile meta-updates every ``meta_every`` readings, as a
  worker runs it (it computes the meta contributions; only their aggregation
  runs in the meta agent);
- its predict-then-learn step alone (no drift detection, no adaptation):
  the same work as the torch loop below;
- a one-sample-at-a-time torch loop (one ``nn.Module`` + SGD per device);
- River's per-device ``StandardScaler | LinearRegression``.

Then, in the same run, the rows of :mod:`pipeline.tools.bench_scale`: the full-work
learner on large fleets (``--scale-devices``: readings/s and peak RSS) and the
meta aggregator's contributions/s (``--meta-deltas``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from learners.config import LearnerConfig
from learners.evaluation.synthetic import FleetStream, make_fleet_stream
from learners.fleet import FleetLearner
from learners.nets import build_template
from learners.river_fleet import RiverFleet
from pipeline.tools.bench_scale import print_scale, run_scale_bench

BATCH = 1000
LOOP = "one-sample-at-a-time torch loop"


def _rate(n: int, run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return n / (time.perf_counter() - start)


def bench_vectorised(stream: FleetStream, cfg: LearnerConfig, n: int, online_only: bool = False) -> float:
    """Readings/s of :class:`FleetLearner` (predict, learn, drift, adapt, meta).

    With ``online_only`` the timed part is :meth:`FleetLearner.learn_online`
    alone: predict-then-learn, the torch loop's work and nothing more.
    """
    fleet = FleetLearner(cfg, init="reptile")
    ids, x, y = stream.device_ids, stream.x, stream.y
    warm = len(ids) - n  # every device joins and has its first adaptation before timing starts
    for a in range(0, warm, BATCH):
        fleet.learn_predict(ids[a : a + BATCH], x[a : a + BATCH], y[a : a + BATCH])
    step = fleet.learn_online if online_only else fleet.learn_predict

    def run() -> None:
        for a in range(warm, warm + n, BATCH):
            step(ids[a : a + BATCH], x[a : a + BATCH], y[a : a + BATCH])

    return _rate(n, run)


def bench_torch_loop(stream: FleetStream, cfg: LearnerConfig, n: int) -> float:
    """Readings/s of one torch SGD step per reading on per-device modules."""
    torch.manual_seed(cfg.seed)
    models: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {}
    x = torch.tensor(stream.x[:n], dtype=torch.float32)
    y = torch.tensor(stream.y[:n], dtype=torch.float32)
    for d in dict.fromkeys(stream.device_ids[:n]):
        m = build_template(cfg)
        models[d] = (m, torch.optim.SGD(m.parameters(), lr=cfg.online_lr))

    def run() -> None:
        for i in range(n):
            model, opt = models[stream.device_ids[i]]
            out = model(x[i : i + 1]).squeeze(-1)
            loss = ((out - y[i : i + 1]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    return _rate(n, run)


def bench_river(stream: FleetStream, cfg: LearnerConfig, n: int) -> float:
    """Readings/s of River per-device linear models (predict_one + learn_one)."""
    fleet = RiverFleet(cfg, kind="linear")

    def run() -> None:
        for a in range(0, n, BATCH):
            fleet.learn_predict(
                stream.device_ids[a : a + BATCH], stream.x[a : a + BATCH], stream.y[a : a + BATCH]
            )

    return _rate(n, run)


def run_core_bench(args: argparse.Namespace) -> int:
    n_vec = args.readings
    n_loop = args.loop_readings
    n_river = min(args.readings, 100_000)
    warm = 50 * args.devices
    stream = make_fleet_stream(n_devices=args.devices, n_readings=n_vec + warm, late_joiners=0.0, seed=0)
    cfg = LearnerConfig(n_features=stream.x.shape[1])
    no_meta = LearnerConfig(n_features=cfg.n_features, meta_every=10**12)
    benches: list[tuple[str, int, Callable[[], float]]] = [
        (LOOP, n_loop, lambda: bench_torch_loop(stream, cfg, n_loop)),
        (
            "vectorised: online SGD + drift + adaptation",
            n_vec,
            lambda: bench_vectorised(stream, no_meta, n_vec),
        ),
        (
            f"vectorised: the same + meta-update every {cfg.meta_every} readings",
            n_vec,
            lambda: bench_vectorised(stream, cfg, n_vec),
        ),
        (
            "vectorised: online SGD only (the loop's work)",
            n_vec,
            lambda: bench_vectorised(stream, no_meta, n_vec, online_only=True),
        ),
        (
            "river StandardScaler|LinearRegression per device",
            n_river,
            lambda: bench_river(stream, cfg, n_river),
        ),
    ]
    # Rounds of every bench in turn: a slow spell of a shared machine then hits all
    # rows of one round, and each ratio is taken within its round.
    rates = np.array([[run() for _, _, run in benches] for _ in range(args.repeat)])
    ratios = rates / rates[:, :1]
    rows = [
        {
            "bench": name,
            "devices": args.devices,
            "readings": readings,
            "readings_per_s": round(float(np.median(rates[:, i])), 1),
            "x_vs_torch_loop": round(float(np.median(ratios[:, i])), 1),
            "x_vs_torch_loop_range": [
                round(float(ratios[:, i].min()), 1),
                round(float(ratios[:, i].max()), 1),
            ],
            "repeats": args.repeat,
            "threads": torch.get_num_threads(),
        }
        for i, (name, readings, _) in enumerate(benches)
    ]
    sizes = [int(v) for v in str(args.scale_devices).split(",") if v.strip() and int(v) > 0]
    scale = run_scale_bench(sizes, args.meta_deltas) if sizes or args.meta_deltas else []
    if not args.json:
        _print_core(rows, args)
        if scale:
            print()
            print_scale(scale)
    rows += scale
    if args.e2e:
        from pipeline.tools.bench_e2e import run_e2e_bench

        e2e = run_e2e_bench()
        if args.json:
            rows += e2e
        else:
            print()
            for r in e2e:
                print(json.dumps(r))
            return 0
    if args.json:
        for r in rows:
            print(json.dumps(r))
    return 0


def _print_core(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    w = max(len(r["bench"]) for r in rows)
    print(f"{'core benchmark':<{w}}  {'readings/s':>12}  {'× torch loop':>12}  {'(min–max)':>11}")
    for r in rows:
        low, high = r["x_vs_torch_loop_range"]
        print(
            f"{r['bench']:<{w}}  {r['readings_per_s']:>12,.0f}  {r['x_vs_torch_loop']:>12.1f}"
            f"  {f'{low:.1f}–{high:.1f}':>11}"
        )
    print(
        f"(medians of {args.repeat} rounds; {args.devices} devices, 8 features, MLP 8→32→1, "
        f"micro-batch {BATCH}, {torch.get_num_threads()} torch threads, seed 0)"
    )


__all__ = ["run_core_bench"]
