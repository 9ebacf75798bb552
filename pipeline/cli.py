"""``metastream`` command line: replay, generate, bench (and the streaming commands)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from learners.config import LearnerConfig


def _learner_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("learner settings (defaults from LearnerConfig)")
    g.add_argument("--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), help="e.g. 32 or 64,32")
    for name, typ in (
        ("online-lr", float),
        ("inner-lr", float),
        ("inner-steps", int),
        ("buffer-size", int),
        ("adapt-after", int),
        ("meta-lr", float),
        ("meta-every", int),
        ("meta-batch", int),
        ("cooldown", int),
        ("guard-holdout", float),
        ("guard-min-holdout", int),
        ("clip", float),
        ("trim", float),
        ("seed", int),
    ):
        g.add_argument(f"--{name}", type=typ)
    g.add_argument("--detector", choices=["adwin", "page_hinkley", "kswin"])


def learner_config(args: argparse.Namespace, **fixed: Any) -> LearnerConfig:
    """A :class:`LearnerConfig` from the CLI flags that were given, plus ``fixed``."""
    given = {
        f.name: getattr(args, f.name)
        for f in fields(LearnerConfig)
        if getattr(args, f.name, None) is not None
    }
    return LearnerConfig(**{**given, **fixed})


def cmd_replay(args: argparse.Namespace) -> int:
    from connectors.csv_source import load_readings_csv
    from learners.replay import default_batch_size, replay
    from learners.strategies import make_strategy, resolve
    from pipeline.progress import Progress

    names = resolve(args.strategy or ["reptile"])
    table = load_readings_csv(args.file, args.device_col, args.target_col, args.time_col, args.task)
    if table.skipped:
        print(f"skipped {len(table.skipped)} bad rows:", file=sys.stderr)
        for s in table.skipped[:10]:
            print(f"  line {s.line}: {s.reason}", file=sys.stderr)
        if len(table.skipped) > 10:
            print(f"  … and {len(table.skipped) - 10} more", file=sys.stderr)
    if len(table) == 0:
        print("error: no usable rows", file=sys.stderr)
        return 2
    n_classes = max(len(table.classes), 2)
    cfg = learner_config(args, n_features=table.x.shape[1], task=table.task, n_classes=n_classes)
    batch = args.batch_size or default_batch_size(len(set(table.device_ids)))
    results = []
    for name in names:
        bar = Progress(len(table), f"{name:>12}")
        out = replay(
            make_strategy(name, cfg), table.device_ids, table.x, table.y, table.task, batch, bar.update
        )
        bar.close()
        results.append(out)
        if args.json:
            print(json.dumps(out), flush=True)
    if not args.json:
        print(format_table(results, table.task))
    return 0


def format_table(results: list[dict[str, Any]], task: str) -> str:
    """Results as an aligned text table."""
    metric = ["mae", "rmse"] if task == "regression" else ["accuracy"]
    cols = ["strategy", "n", "devices", *metric, "drifts", "adaptations", "recovery_median", "samples_per_s"]
    rows = [[_fmt(r.get(c)) for c in cols] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def cmd_generate(args: argparse.Namespace) -> int:
    from connectors.csv_source import write_readings_csv
    from learners.synthetic import make_fleet_stream

    s = make_fleet_stream(
        n_devices=args.devices,
        n_readings=args.readings,
        n_features=args.features,
        task=args.task,
        n_classes=args.classes,
        drifts_per_device=args.drifts_per_device,
        seed=args.seed,
    )
    write_readings_csv(args.out, s.device_ids, s.x, s.y, s.time, s.feature_names())
    if args.truth:
        with open(args.truth, "w") as f:
            json.dump([d.__dict__ for d in s.drifts], f, indent=1)
    print(
        f"wrote {len(s)} readings of {args.devices} devices ({len(s.drifts)} drifts) to {args.out}",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The end-to-end streaming demo, or (``--offline``) a replay of every strategy."""
    if not args.offline:
        from pipeline.demo import format_summary, run_demo

        summary = run_demo(args.duration, args.devices, args.rate, args.edges, args.broker_kind, args.seed)
        print(json.dumps(summary) if args.json else format_summary(summary))
        return 0
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.csv"
        cmd_generate(build_parser().parse_args(["generate", "--out", str(path), "--seed", str(args.seed)]))
        names = ["reptile", "fomaml", "scratch", "finetune", "global", "river-linear"]
        replay_args = [
            "replay",
            str(path),
            "--device-col",
            "device",
            "--target-col",
            "target",
            "--time-col",
            "time",
            *(arg for n in names for arg in ("--strategy", n)),
        ]
        return cmd_replay(build_parser().parse_args(replay_args))


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.bench_core import run_core_bench

    return run_core_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metastream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="run a CSV of readings through the learner core offline")
    p.add_argument("file")
    p.add_argument("--device-col", required=True)
    p.add_argument("--target-col", required=True)
    p.add_argument("--time-col", help="sort by this column (numbers or ISO times); else file order")
    p.add_argument("--task", choices=["regression", "classification"], help="inferred if absent")
    p.add_argument(
        "--strategy",
        action="append",
        help="reptile|fomaml|scratch|global|finetune|river|river-linear|river-hat|all; repeatable",
    )
    p.add_argument("--batch-size", type=int, help="readings per micro-batch (default: ~1 per device)")
    p.add_argument("--json", action="store_true", help="one JSON object per strategy per line")
    _learner_args(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("generate", help="write a seeded synthetic fleet with drift as CSV")
    p.add_argument("--out", required=True)
    p.add_argument("--truth", help="also write the true drift points as JSON here")
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--readings", type=int, default=60_000)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--task", choices=["regression", "classification"], default="regression")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--drifts-per-device", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the whole loop in a minute: broker, worker, fleet with drift, edges")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of produced readings")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--rate", type=float, default=2000.0, help="readings/s")
    p.add_argument("--edges", type=int, default=3, help="edge subscribers (one device each)")
    p.add_argument("--broker-kind", choices=["embedded", "kafka"], default="embedded")
    p.add_argument("--json", action="store_true")
    p.add_argument("--offline", action="store_true", help="no broker: replay a fleet through every strategy")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="throughput benchmarks")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--readings", type=int, default=200_000)
    p.add_argument(
        "--loop-readings",
        type=int,
        default=5_000,
        help="readings for the slow one-sample-at-a-time torch loop",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of every core bench in turn; medians are reported (default 3)",
    )
    p.add_argument("--e2e", action="store_true", help="also the end-to-end figures on Apache Kafka")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    from connectors import edge, producer
    from pipeline import broker_cli, evaluate, poison, soak, worker

    evaluate.add_cli(sub)
    poison.add_cli(sub)
    soak.add_cli(sub)
    worker.add_cli(sub)
    broker_cli.add_cli(sub)
    producer.add_cli(sub)
    edge.add_cli(sub)
    _add_device_commands(sub)
    return parser


def _add_device_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Devices that speak MQTT or run ONNX: ``mqtt-bridge`` and ``export``."""
    from pipeline import export_onnx, mqtt_bridge

    mqtt_bridge.add_cli(sub)
    export_onnx.add_cli(sub)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    import torch

    # The per-op work is tiny: one thread is fastest, and two processes with
    # two threads each on two cores slow torch down several times over.
    torch.set_num_threads(int(os.environ.get("METASTREAM_TORCH_THREADS", "1")))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError, RuntimeError) as exc:  # bad input, missing file, broker problems
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
