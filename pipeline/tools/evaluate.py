"""``metastream evaluate``: every strategy on a real data set, and the drift detectors.

For a data set (``air``, ``wind``, ``watch``, ``synthetic`` or a CSV) it
holds out a seeded share of the devices, replays the others' readings
through each strategy (prequential error, drifts, recovery), then scores
k-shot personalisation on the held-out devices (:mod:`learners.evaluation.kshot`).
``evaluate detectors`` scores ADWIN, PageHinkley and KSWIN on synthetic
error streams with known drifts (:mod:`learners.evaluation.detector_eval`).

Wire it in with ``add_cli(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np

FLAGS_HELP = (
    "auto|continuous|blend|blend-finetune|reptile|fomaml|scratch|global|finetune|river|river-linear|"
    "river-hat|all; repeatable (default all)"
)


def add_cli(subparsers: Any) -> None:
    """Register the ``evaluate`` sub-command on ``metastream``'s sub-parsers."""
    from pipeline.tools.learner_options import add_learner_args

    p = subparsers.add_parser(
        "evaluate",
        help="strategies on a data set: prequential error, recovery, k-shot on held-out devices",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="air | wind | watch | synthetic | detectors | path to a CSV")
    p.add_argument("--device-col", help="CSV only: device id column")
    p.add_argument("--target-col", help="CSV only: target column")
    p.add_argument("--time-col", help="CSV only: sort by this column")
    p.add_argument("--task", choices=["regression", "classification"], help="CSV only; inferred if absent")
    p.add_argument("--strategy", action="append", help=FLAGS_HELP)
    p.add_argument("--held-out", type=float, default=0.2, help="share of devices held out (default 0.2)")
    p.add_argument("--ks", default="5,10,20,50", help="k-shot sizes (default 5,10,20,50)")
    p.add_argument("--horizon", type=int, default=100, help="readings scored after the k (default 100)")
    p.add_argument(
        "--episodes", type=int, default=10, help="k-shot episodes per held-out device (default 10)"
    )
    p.add_argument(
        "--kshot-order",
        choices=["time", "shuffled"],
        default="time",
        help="support = a device's next k readings (time) or a random k (shuffled)",
    )
    p.add_argument(
        "--validation",
        action="store_true",
        help="for tuning: drop the held-out test devices and hold out a share of the training devices",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="STRATEGY:NAME=VALUE[,NAME=VALUE]",
        help="learner settings for one strategy only, e.g. global:online_lr=0.002; repeatable",
    )
    p.add_argument(
        "--swaps",
        type=int,
        default=0,
        metavar="N",
        help="device swaps: N training devices continue, from a seeded reading on, with another "
        "device's readings; reports each strategy's median recovery (learners.evaluation.device_swap)",
    )
    p.add_argument("--max-readings", type=int, help="subsample: keep only the first N readings in time order")
    p.add_argument("--batch-size", type=int, help="readings per micro-batch (default: ~1 per device)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: tiny models)")
    p.add_argument("--detectors", action="store_true", help="also evaluate the drift detectors")
    p.add_argument("--streams", type=int, default=200, help="error streams for the detector evaluation")
    p.add_argument(
        "--detector-modes",
        default="raw,monitor",
        help="raw,monitor,monitor-lockstep (lockstep: every device drifts at once)",
    )
    p.add_argument(
        "--seeds",
        metavar="S,S,…",
        help="run under each learner seed (same devices, data and episodes: those of --seed) and compare "
        "the --reference strategy with every other one: k-shot paired over seeds and episodes, "
        "prequential error paired over seeds and training devices (learners.evaluation.compare)",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="STRATEGY",
        help="the strategy --seeds compares with every other one (default auto if it runs, else reptile)",
    )
    p.add_argument("--report", metavar="DIR", help="write DIR/index.html, DIR/*.png and DIR/results.json")
    p.add_argument("--json", action="store_true", help="one JSON object per strategy (or detector) per line")
    add_learner_args(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation the flags ask for; print a table or JSON lines; write the report."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(args.threads, 1))
    try:
        return _evaluate(args)
    finally:
        torch.set_num_threads(threads)


def _evaluate(args: argparse.Namespace) -> int:
    """The body of :func:`cmd_evaluate`."""
    seed = args.seed or 0
    results: dict[str, Any] = {"seed": seed}
    runs: dict[str, Any] = {}
    data = None
    if args.dataset != "detectors" and args.seeds:
        data, runs, results = evaluate_seeds(args, [int(s) for s in args.seeds.split(",")], seed)
    elif args.dataset != "detectors":
        data, runs, results = evaluate_dataset(args, seed)
    if args.dataset == "detectors" or args.detectors:
        modes = args.detector_modes.split(",")
        results["detectors"] = evaluate_detectors(args.streams, seed, args.json, modes)
    if not args.json:
        if runs:
            print(format_results(results["strategies"], results["task"]))
        if "swaps" in results:
            print(format_swaps(results))
        if "comparison" in results:
            from learners.evaluation.compare import format_comparison

            seeds = ",".join(str(s) for s in results["seeds"])
            ref = results["reference"]
            print(f"\nk-shot error, {ref} minus baseline, over seeds {seeds} (negative: {ref} better)")
            print(format_comparison(results["comparison"]))
            print(f"\nprequential error per training device, {ref} minus baseline, over seeds {seeds}")
            print(format_comparison(results["prequential_comparison"]))
        if "detectors" in results:
            print(format_detectors(results["detectors"]))
    if args.report:
        from pipeline.tools.report import write_report

        path = write_report(args.report, results, runs, data)
        print(f"report: {path}", file=sys.stderr)
    return 0


def evaluate_seeds(
    args: argparse.Namespace, seeds: Sequence[int], split_seed: int
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """:func:`evaluate_dataset` under each learner seed, and reptile compared with the others.

    The data, the device split and the episodes are those of ``split_seed``
    in every run, so each strategy is scored on the same episodes throughout;
    only the learners' seed changes.  Returns the first seed's data and runs
    (for the report's figures) and its results, with ``seeds``,
    ``per_seed`` (every seed's strategy rows) and ``comparison`` added.
    """
    from learners.evaluation.compare import compare

    errors: dict[str, list[np.ndarray]] = {}
    preq: dict[str, list[np.ndarray]] = {}
    per_seed: list[list[dict[str, Any]]] = []
    first: tuple[Any, dict[str, Any], dict[str, Any]] | None = None
    for s in seeds:
        out = evaluate_dataset(argparse.Namespace(**{**vars(args), "seed": s}), s, split_seed)
        first = first or out
        per_seed.append(out[2]["strategies"])
        for name, run in out[1].items():
            errors.setdefault(name, []).append(run.curve.per_episode)
            preq.setdefault(name, []).append(per_device_errors(out[0].device_ids, run.train_rows, run.errors))
    assert first is not None, "no seeds"
    data, runs, results = first
    ref = args.reference or ("auto" if "auto" in errors else "reptile")
    results = {**results, "seeds": list(seeds), "per_seed": per_seed, "reference": ref}
    if ref in errors:
        results["comparison"] = compare(errors, results["ks"], ref, seed=split_seed)
        # One "k" column, 0: each training device's mean prequential error, paired by device.
        results["prequential_comparison"] = compare(preq, [0], ref, seed=split_seed)
        if args.json:
            print(json.dumps({"comparison": results["comparison"]}), flush=True)
            print(json.dumps({"prequential_comparison": results["prequential_comparison"]}), flush=True)
    return data, runs, results


def per_device_errors(device_ids: Sequence[str], rows: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """Mean prequential error of each device of ``rows`` (sorted by id), as a ``[devices, 1]`` matrix.

    Examples
    --------
    >>> per_device_errors(["b", "a", "b", "c"], np.array([0, 1, 2]), np.array([1.0, 4.0, 3.0]))
    array([[4.],
           [2.]])
    """
    ids = np.asarray(device_ids)[rows]
    names, inverse = np.unique(ids, return_inverse=True)
    sums = np.bincount(inverse, weights=errors, minlength=len(names))
    return (sums / np.bincount(inverse, minlength=len(names))).reshape(-1, 1)


def evaluate_dataset(
    args: argparse.Namespace, seed: int, split_seed: int | None = None
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Load, split, run every strategy; returns the data, the runs and JSON-ready results.

    ``seed`` seeds the learners; ``split_seed`` (default ``seed``) the data
    set, the held-out devices and shuffled episodes.
    """
    from learners.evaluation.kshot import run_held_out
    from learners.evaluation.replay import default_batch_size
    from learners.strategies import make_strategy, resolve
    from pipeline.tools.learner_options import learner_config
    from pipeline.tools.progress import Progress

    names = resolve(args.strategy or ["all"])
    overrides = parse_overrides(args.override)
    ks = sorted({int(k) for k in args.ks.split(",")})
    split_seed = seed if split_seed is None else split_seed
    data, train, held, split = _load_and_split(args, split_seed, ks[-1] + args.horizon)
    swaps: list[Any] = []
    if getattr(args, "swaps", 0):
        data, swaps = _swap_devices(data, train, args.swaps, split_seed)
    cfg = learner_config(
        args, n_features=data.x.shape[1], task=data.task, n_classes=max(len(data.classes), 2)
    )
    batch = args.batch_size or default_batch_size(len(train))
    shuffle_seed = split_seed if args.kshot_order == "shuffled" else None
    n_train = len(data) - sum(np.isin(np.asarray(data.device_ids), held))
    rows, runs = [], {}
    for name in names:
        bar = Progress(n_train, f"{name:>12}")
        run = run_held_out(
            make_strategy(name, replace(cfg, **overrides.get(name, {}))),
            data.device_ids,
            data.x,
            data.y,
            data.task,
            held,
            batch,
            ks,
            args.horizon,
            args.episodes,
            shuffle_seed,
            bar.update,
        )
        bar.close()
        row = {"dataset": data.name, "split": split, "seed": seed, **run.summary}
        row["overrides"] = overrides.get(name, {})
        if swaps:
            row.update(_swap_summary(data, run, swaps))
        rows.append(row)
        runs[name] = run
        if args.json:
            print(json.dumps(row), flush=True)
    add_paired_differences(rows, runs)
    results = {
        "dataset": data.name,
        "description": data.description,
        "task": data.task,
        "readings": len(data),
        "devices": len(train) + len(held),
        "training_devices": len(train),
        "held_out_devices": held,
        "split": split,
        "kshot_order": args.kshot_order,
        "ks": ks,
        "horizon": args.horizon,
        "episodes": args.episodes,
        "batch_size": batch,
        "seed": seed,
        "split_seed": split_seed,
        "config": asdict(cfg),
        "overrides": overrides,
        "strategies": rows,
    }
    if swaps:
        results["swaps"] = [asdict(s) for s in swaps]
    return data, runs, results


def _load_and_split(
    args: argparse.Namespace, split_seed: int, min_readings: int
) -> tuple[Any, list[str], list[str], str]:
    """The data set (validation: training devices only), its training and held-out devices, the split."""
    from learners.evaluation.kshot import split_devices
    from pipeline.tools.datasets import load_dataset

    data = load_dataset(args.dataset, args.device_col, args.target_col, args.time_col, args.task, split_seed)
    if args.max_readings:
        data = take_first(data, args.max_readings)
    train, held = split_devices(data.device_ids, args.held_out, split_seed, min_readings)
    split = "test"
    if args.validation:
        data = keep_devices(data, set(train))
        train, held = split_devices(data.device_ids, args.held_out, split_seed + 1, min_readings)
        split = "validation"
    return data, train, held, split


def _swap_devices(data: Any, train: list[str], n_swaps: int, split_seed: int) -> tuple[Any, list[Any]]:
    """``data`` with ``n_swaps`` planned device swaps applied, and the swaps."""
    from learners.evaluation.device_swap import apply_swaps, plan_swaps

    swaps = plan_swaps(data.device_ids, train, n_swaps, split_seed)
    table = apply_swaps(data.device_ids, data.x, data.y, swaps)
    swapped = replace(
        data,
        device_ids=[data.device_ids[i] for i in table.keep],
        x=table.x[table.keep],
        y=table.y[table.keep],
        time=data.time[table.keep],
    )
    return swapped, swaps


def _swap_summary(data: Any, run: Any, swaps: list[Any]) -> dict[str, Any]:
    """How the run's learners recovered from each planned device swap."""
    from learners.evaluation.device_swap import summarise_recoveries, swap_recoveries

    stream_ids = [data.device_ids[i] for i in run.train_rows]
    return summarise_recoveries(swap_recoveries(stream_ids, run.errors, swaps))


def add_paired_differences(
    rows: list[dict[str, Any]], runs: dict[str, Any], reference: str = "reptile"
) -> None:
    """Add ``kshot_minus_<reference>`` (and online): per k, mean ± s.e. of the per-episode difference.

    All strategies are scored on the same episodes, so paired differences are
    much tighter than the curves' own standard errors.  Positive: the
    reference has the lower error.
    """
    from learners.evaluation.kshot import paired_difference

    if reference not in runs:
        return
    ref = runs[reference]
    for row in rows:
        run = runs[row["strategy"]]
        if row["strategy"] == reference:
            continue
        row[f"kshot_minus_{reference}"] = paired_difference(run.curve, ref.curve)
        if run.online is not None and ref.online is not None:
            row[f"kshot_online_minus_{reference}"] = paired_difference(run.online, ref.online)


def parse_overrides(specs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["global:online_lr=0.002", "finetune:inner-lr=0.02,online_lr=0.01"]`` → settings per strategy.

    Examples
    --------
    >>> parse_overrides(["global:online-lr=0.002", "reptile:inner_steps=5,clip=1"])
    {'global': {'online_lr': 0.002}, 'reptile': {'inner_steps': 5, 'clip': 1.0}}
    >>> parse_overrides(["reptile:hiden=3"])
    Traceback (most recent call last):
    ...
    ValueError: --override reptile:hiden=3: unknown or unsupported setting 'hiden'
    """
    from dataclasses import fields

    from learners.config import LearnerConfig
    from learners.strategies import resolve

    kinds = {f.name: f.type for f in fields(LearnerConfig)}
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        name, _, assignments = spec.partition(":")
        (strategy,) = resolve([name])
        for item in assignments.split(","):
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            kind = str(kinds.get(key, ""))
            if kind not in ("int", "float", "float | None", "str", "DetectorName"):
                raise ValueError(f"--override {spec}: unknown or unsupported setting {key!r}")
            converted: Any = (
                int(value) if kind == "int" else value if kind in ("str", "DetectorName") else float(value)
            )
            out.setdefault(strategy, {})[key] = converted
    return out


def take_first(data: Any, n: int) -> Any:
    """The first ``n`` readings of a data set (it is in time order)."""
    return replace(data, device_ids=data.device_ids[:n], x=data.x[:n], y=data.y[:n], time=data.time[:n])


def keep_devices(data: Any, devices: set[str]) -> Any:
    """Only the readings of ``devices``."""
    rows = np.flatnonzero([d in devices for d in data.device_ids])
    return replace(
        data,
        device_ids=[data.device_ids[i] for i in rows],
        x=data.x[rows],
        y=data.y[rows],
        time=data.time[rows],
    )


def evaluate_detectors(
    n_streams: int, seed: int, as_json: bool, modes: Sequence[str] = ("raw", "monitor")
) -> list[dict[str, Any]]:
    """Detector × mode × stream-kind rows on seeded synthetic error streams."""
    from learners.evaluation.detector_eval import evaluate_detectors as run
    from learners.evaluation.detector_eval import make_error_streams

    rows = run(make_error_streams(n_streams=n_streams, seed=seed), seed=seed, modes=modes)
    if as_json:
        for r in rows:
            print(json.dumps(r), flush=True)
    return rows


def format_results(rows: Sequence[dict[str, Any]], task: str) -> str:
    """One line per strategy: prequential error, drifts, recovery, k-shot error per k."""
    metric = ["mae", "rmse"] if task == "regression" else ["accuracy"]
    ks = list(rows[0]["kshot"]) if rows else []
    online = bool(rows) and "kshot_online" in rows[0]
    head = ["strategy", "n", *metric, "drifts", "recovery_median", "recovery_measured"]
    head += [f"k{k}" for k in ks] + ([f"online_k{k}" for k in ks] if online else []) + ["seconds"]
    table = [
        [
            r["strategy"],
            r["n"],
            *(r.get(m) for m in metric),
            r["drifts"],
            r["recovery_median"],
            r["recovery_measured"],
            *(r["kshot"][k] for k in ks),
            *((r["kshot_online"][k] for k in ks) if online else ()),
            r["seconds"],
        ]
        for r in rows
    ]
    note = (
        "k-shot: " + ("MAE" if task == "regression" else "error rate") + " on the held-out devices, "
        "personalised from the state at the end of the stream (k…) or when the episode began (online_k…)"
    )
    return _table(head, table) + "\n" + note


def format_swaps(results: dict[str, Any]) -> str:
    """Per strategy (and seed): median readings to recover from the device swaps, and how many recovered."""
    from learners.evaluation.device_swap import BASELINE, TOLERANCE, WINDOW

    runs = results.get("per_seed") or [results["strategies"]]
    head = ["strategy", "seed", "swaps", "swap_recovery_median", "swap_recovered"]
    table = [
        [r["strategy"], r["seed"], r["swaps"], r["swap_recovery_median"], r["swap_recovered"]]
        for rs in runs
        for r in rs
    ]
    note = (
        f"device swaps: readings i after the swap until the device's mean error over its last "
        f"min(i, {WINDOW}) is back within {TOLERANCE}x its mean over the {BASELINE} before "
        "(unrecovered: readings left)"
    )
    return "\n" + _table(head, table) + "\n" + note


def format_detectors(rows: Sequence[dict[str, Any]]) -> str:
    """One line per detector × mode × stream kind."""
    head = ["detector", "mode", "kind", "drifts", "missed", "mean_delay", "false_alarms_per_1000"]
    head.append("us_per_reading")
    return _table(head, [[r[c] for c in head] for r in rows])


def _table(head: list[str], rows: list[list[Any]]) -> str:
    from pipeline.tools.learner_options import format_value

    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) for c in cells]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.tools.evaluate DATASET …``: the same as ``metastream evaluate DATASET …``."""
    parser = argparse.ArgumentParser(prog="metastream")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
