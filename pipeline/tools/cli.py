"""The ``metastream`` command line: replay, generate, demo and bench here, each other command in its module.

A command's module (torch, Faust, …) is imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from learners.config import LearnerConfig
from pipeline.tools.learner_options import add_learner_args, format_value, learner_config

if TYPE_CHECKING:
    import numpy as np

    from learners.config import Task


def cmd_replay(args: argparse.Namespace) -> int:
    from learners.evaluation.replay import default_batch_size
    from learners.strategies import resolve
    from pipeline.tools.csv_source import load_readings_csv

    names = resolve(args.strategy or ["reptile"])
    table = load_readings_csv(
        args.file,
        args.device_col,
        args.target_col,
        args.time_col,
        args.task,
        feature_cols=_columns(args.feature_cols),
        ignore_cols=_columns(args.ignore_cols) or (),
    )
    for note in table.notes:
        print(f"note: {note}", file=sys.stderr)
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
    replay_strategies(names, cfg, table.device_ids, table.x, table.y, table.task, batch, args.json)
    return 0


def replay_strategies(
    names: list[str],
    cfg: LearnerConfig,
    device_ids: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    task: Task,
    batch: int,
    as_json: bool,
) -> list[dict[str, Any]]:
    """Replay the readings through each strategy; print a JSON line per strategy or one table."""
    from learners.evaluation.replay import replay
    from learners.strategies import make_strategy
    from pipeline.tools.progress import Progress

    results = []
    for name in names:
        bar = Progress(len(device_ids), f"{name:>12}")
        out = replay(make_strategy(name, cfg), device_ids, x, y, task, batch, bar.update)
        bar.close()
        results.append(out)
        if as_json:
            print(json.dumps(out), flush=True)
    if not as_json:
        print(format_table(results, task))
    return results


def _columns(text: str | None) -> list[str] | None:
    """``a,b`` as ``["a", "b"]`` (``None`` when not given)."""
    return None if text is None else [c.strip() for c in text.split(",") if c.strip()]


def format_table(results: list[dict[str, Any]], task: str) -> str:
    """Results as an aligned text table."""
    metric = ["mae", "rmse"] if task == "regression" else ["accuracy"]
    cols = ["strategy", "n", "devices", *metric, "drifts", "adaptations", "recovery_median", "samples_per_s"]
    rows = [[format_value(r.get(c)) for c in cols] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    from learners.evaluation.synthetic import make_fleet_stream
    from pipeline.tools.csv_source import write_readings_csv

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
        from pipeline.tools.demo import format_summary, run_demo

        summary = run_demo(args.duration, args.devices, args.rate, args.edges, args.broker_kind, args.seed)
        print(json.dumps(summary) if args.json else format_summary(summary))
        return 0
    from learners.evaluation.replay import default_batch_size
    from learners.evaluation.synthetic import make_fleet_stream

    # The fleet `metastream generate` writes by default, replayed in memory.
    fleet = make_fleet_stream(n_devices=100, n_readings=60_000, n_features=8, seed=args.seed)
    names = ["reptile", "fomaml", "scratch", "finetune", "global", "river-linear"]
    cfg = LearnerConfig(n_features=fleet.x.shape[1], task="regression")
    batch = default_batch_size(len(set(fleet.device_ids)))
    replay_strategies(names, cfg, fleet.device_ids, fleet.x, fleet.y, "regression", batch, as_json=False)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.edge:
        from pipeline.tools.bench_edge import run_edge_bench

        return run_edge_bench(args)
    from pipeline.tools.bench_core import run_core_bench

    return run_core_bench(args)


# Commands defined in their own modules: (module with ``add_cli``, help shown by ``metastream --help``).
_COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate": (
        "pipeline.tools.evaluate",
        "strategies on a data set: prequential error, recovery, k-shot on held-out devices",
    ),
    "poison": ("pipeline.tools.poison", "poisoned federated updates vs robust aggregation (no broker)"),
    "dp-utility": (
        "pipeline.tools.dp_utility",
        "k-shot error under differential privacy vs none (no broker)",
    ),
    "soak": (
        "pipeline.tools.soak",
        "sustained paced load on one worker for minutes: memory (RSS) and consumer lag",
    ),
    "worker": ("pipeline.worker", "run a stream worker (Faust) until SIGTERM/SIGINT"),
    "broker": ("pipeline.tools.broker_cli", "start or stop a local Kafka broker (Apache Kafka or embedded)"),
    "produce": ("pipeline.tools.produce", "send sensor readings (synthetic or CSV) to the readings topic"),
    "edge": ("connectors.edge", "follow, verify and hot-swap the models of some devices"),
    "keys": (
        "pipeline.tools.keys",
        "generate signing keys; sign and publish key sets (rotation, revocation)",
    ),
    "tail": ("pipeline.tools.tail", "print the events, dead letters or models of a deployment"),
    "mqtt-bridge": (
        "pipeline.mqtt_bridge",
        "forward MQTT readings to Kafka and models to retained MQTT messages",
    ),
    "export": (
        "pipeline.tools.export_onnx",
        "write a device's newest verified model as ONNX (or its signed envelope)",
    ),
}

# Commands that talk to a broker from the start: without one they fail fast, in one line.
_NEEDS_BROKER = frozenset({"worker", "edge", "produce", "tail"})

# Commands that never need torch: its start-up cost is not paid for them.
_TORCH_FREE = frozenset({"broker", "produce", "edge", "tail", "keys"})


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``metastream`` parser.

    Parameters
    ----------
    load : collection of str, optional
        Commands from other modules whose arguments are needed (default: all).
        The others are only listed, so ``metastream --help`` stays fast.

    Examples
    --------
    >>> build_parser(load=()).parse_args(["generate", "--out", "f.csv"]).devices
    100
    """
    parser = argparse.ArgumentParser(prog="metastream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_replay_cli(sub)
    add_generate_cli(sub)
    add_demo_cli(sub)
    add_bench_cli(sub)
    for name, (module, help_text) in _COMMANDS.items():
        if load is None or name in load:
            importlib.import_module(module).add_cli(sub)
        else:
            # Listed for ``--help``; its module (torch, Faust, …) is only imported when chosen.
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def add_replay_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``replay`` sub-command."""
    p = sub.add_parser(
        "replay",
        help="run a CSV of readings through the learner core offline",
        description=(
            "Features: the columns named in --feature-cols; without it, every column but device, "
            "target, time and --ignore-cols, except a column named time, timestamp, ts, date or "
            "datetime (any case) and a text column (mostly non-numbers), which are left out with a note."
        ),
    )
    p.add_argument("file")
    p.add_argument("--device-col", required=True)
    p.add_argument("--target-col", required=True, help="must differ from --device-col")
    p.add_argument("--time-col", help="sort by this column (numbers or ISO times); else file order")
    p.add_argument("--feature-cols", metavar="A,B,...", help="exactly these columns are the features")
    p.add_argument("--ignore-cols", metavar="A,B,...", help="columns that are never features")
    p.add_argument("--task", choices=["regression", "classification"], help="inferred if absent")
    p.add_argument(
        "--strategy",
        action="append",
        help="auto|continuous|blend|blend-finetune|reptile|fomaml|scratch|global|finetune|river|river-linear|"
        "river-hat|all; repeatable",
    )
    p.add_argument("--batch-size", type=int, help="readings per micro-batch (default: ~1 per device)")
    p.add_argument("--json", action="store_true", help="one JSON object per strategy per line")
    add_learner_args(p)
    p.set_defaults(func=cmd_replay)


def add_generate_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``generate`` sub-command."""
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


def add_demo_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``demo`` sub-command."""
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


def add_bench_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``bench`` sub-command."""
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
    p.add_argument(
        "--scale-devices",
        default="10000,100000",
        help="fleet sizes (comma-separated) for the full-work rows with peak RSS; 0 skips them",
    )
    p.add_argument(
        "--meta-deltas",
        type=int,
        default=300,
        help="one-device contributions through the meta aggregator (0 skips its rows)",
    )
    p.add_argument("--e2e", action="store_true", help="also the end-to-end figures on Apache Kafka")
    p.add_argument(
        "--edge", action="store_true", help="only the device package's figures (own venv, no torch)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in _NEEDS_BROKER and not {"-h", "--help"} & set(argv):
        # Before the command's module (Faust, torch) is imported: a missing broker is told at once.
        early = argparse.ArgumentParser(add_help=False)
        early.add_argument("--settings")
        early.add_argument("--broker")
        try:
            _check_broker(early.parse_known_args(argv, argparse.Namespace(command=command))[0])
        except (ValueError, OSError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args = build_parser(load={command} if command in _COMMANDS else ()).parse_args(argv)
    if args.command not in _TORCH_FREE:
        import os

        import torch

        # The per-op work is tiny: one thread is fastest, and two processes with
        # two threads each on two cores slow torch down several times over.
        torch.set_num_threads(int(os.environ.get("METASTREAM_TORCH_THREADS", "1")))
    try:
        return int(args.func(args))
    except (ValueError, OSError, RuntimeError) as exc:  # bad input, missing file, broker problems
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _check_broker(args: argparse.Namespace) -> None:
    from connectors.settings import Settings
    from pipeline.tools.broker_check import check_broker

    settings = Settings.load(args.settings, broker=args.broker)
    check_broker(settings, args.broker, args.settings)
    if args.command != "worker":  # the worker reports outages through its own (aiokafka) log
        from pipeline.broker_log import report_kafka_python_outages

        report_kafka_python_outages(settings.bootstrap)


if __name__ == "__main__":
    sys.exit(main())
