"""What differential privacy costs in k-shot error: ``metastream dp-utility`` (no broker).

The offline federated experiment of :mod:`pipeline.tools.poison` with no attackers:
honest devices of the synthetic fleet adapt θ on their own readings and send
``φ − θ`` every round; the meta agent steps θ with their mean.  With DP each
update is clipped to L2 norm ``clip`` and carries Gaussian noise, either on
the device (``local``) or once on the sum (``central``,
:mod:`metastream_edge.dp`).  The noise multiplier is the one whose
``rounds`` contributions per device spend exactly ε at δ
(:func:`pipeline.privacy.noise_for_epsilon`), so every device ends the run
with exactly its budget spent.  θ is scored as in ``metastream poison``:
held-out devices adapt it on their first ``adapt_after`` readings, MAE on
the readings that follow; each figure is the mean over ``seeds``.
``--dataset air`` (or ``wind``, or a CSV) runs the same on a real data set's
devices instead of the synthetic fleet.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from learners.federated import FederatedDevice, update_all
from learners.meta import MetaLearner
from learners.nets import Params, init_params
from pipeline.tools.poison import Fleet, PoisonSetup, kshot_error

if TYPE_CHECKING:
    from pipeline.tools.csv_source import ReadingsTable

EPSILONS = (1.0, 4.0, 8.0)


def train_theta(
    setup: PoisonSetup, fleet: Fleet, mode: str, noise_multiplier: float, rng: np.random.Generator
) -> Params:
    """θ after ``rounds`` rounds of every honest device's (possibly privatised) update."""
    # Imported here: building the CLI parser must not need the device package nor dp-accounting.
    from metastream_edge.dp import capped_weights, central_privatise, clip_to_norm, local_privatise

    meta = MetaLearner(init_params(setup.cfg, setup.seed), setup.cfg.meta_lr, None, 0.0)
    devices = {d: FederatedDevice(setup.cfg) for d in fleet.honest}
    m = setup.cfg.adapt_after
    for r in range(setup.rounds):
        for d in fleet.honest:
            devices[d].observe(fleet.x[d][r * m : (r + 1) * m], fleet.y[d][r * m : (r + 1) * m])
        updates = update_all([devices[d] for d in fleet.honest], meta.theta)
        deltas = np.stack([u[0].double().numpy() for u in updates if u is not None])
        counts = np.array([u[1] for u in updates if u is not None], dtype=np.float64)
        if mode == "none":
            mean = (counts[:, None] * deltas).sum(axis=0) / counts.sum()
        elif mode == "clip":  # clipping alone: what the bound costs before any noise
            mean = np.mean([clip_to_norm(row, setup.clip) for row in deltas], axis=0)
        elif mode == "local":
            mean = np.mean(
                [local_privatise(row, setup.clip, noise_multiplier, rng) for row in deltas], axis=0
            )
        elif mode == "central":
            weights = capped_weights(counts, weight_cap=float(m))
            total, weight = central_privatise(deltas, weights, setup.clip, noise_multiplier, rng)
            mean = total / weight
        else:
            raise ValueError(f"unknown mode {mode!r}; choose none, clip, local or central")
        meta.step(torch.from_numpy(mean).float()[None], torch.ones(1))
    return meta.theta


def run_dp_utility(
    setup: PoisonSetup,
    epsilons: tuple[float, ...] = EPSILONS,
    modes: tuple[str, ...] = ("central", "local"),
    delta: float = 1e-5,
    seeds: int = 3,
    table: ReadingsTable | None = None,
) -> dict[str, Any]:
    """k-shot MAE without DP, with clipping alone, and with DP at each ε (mean over ``seeds``).

    With ``table``, the devices are drawn from it (seeded) instead of the synthetic fleet.

    Examples
    --------
    >>> setup = PoisonSetup(honest=4, attackers=0, held_out=2, rounds=2, query=20)
    >>> out = run_dp_utility(setup, epsilons=(8.0,), modes=("central",), seeds=1)
    >>> sorted(out["error"]), out["epsilon_spent"]["8.0"] <= 8.0 + 1e-6
    (['central', 'clip', 'none', 'untrained'], True)
    """
    from pipeline.privacy import gaussian_epsilon, noise_for_epsilon

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a busy machine
    try:
        z = {eps: noise_for_epsilon(eps, setup.rounds, delta) for eps in epsilons}
        runs: dict[str, dict[str, list[float]]] = {
            "untrained": {"-": []},
            "none": {"-": []},
            "clip": {"-": []},
        }
        runs |= {mode: {str(eps): [] for eps in epsilons} for mode in modes}
        for s in range(seeds):
            seeded = replace(setup, seed=setup.seed + s)
            fleet = Fleet(seeded, table)
            rng = np.random.default_rng([seeded.seed, 1])
            runs["untrained"]["-"].append(kshot_error(seeded, fleet, init_params(seeded.cfg, seeded.seed)))
            for mode in ("none", "clip"):
                runs[mode]["-"].append(kshot_error(seeded, fleet, train_theta(seeded, fleet, mode, 0.0, rng)))
            for mode in modes:
                for eps in epsilons:
                    theta = train_theta(seeded, fleet, mode, z[eps], rng)
                    runs[mode][str(eps)].append(kshot_error(seeded, fleet, theta))
    finally:
        torch.set_num_threads(threads)
    return {
        "setup": {
            k: v for k, v in asdict(setup).items() if k not in ("cfg", "attackers", "weight_inflation")
        },
        "data": "synthetic" if table is None else getattr(table, "name", "table"),
        "delta": delta,
        "seeds": seeds,
        "noise_multiplier": {str(eps): round(z[eps], 4) for eps in epsilons},
        "epsilon_spent": {
            str(eps): round(gaussian_epsilon(z[eps], setup.rounds, delta), 4) for eps in epsilons
        },
        "error": {
            mode: {k: round(float(np.mean(v)), 4) for k, v in row.items()} for mode, row in runs.items()
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """The error table as aligned text."""
    s, err = result["setup"], result["error"]
    eps = list(result["noise_multiplier"])
    lines = [
        f"θ's k-shot MAE on {s['held_out']} held-out devices of {result['data']} after {s['rounds']} "
        f"rounds of {s['honest']} devices, clip={s['clip']:g}, δ={result['delta']:g}, "
        f"mean of {result['seeds']} seeds",
        f"untrained θ: {err['untrained']['-']:.4f}   no DP: {err['none']['-']:.4f}   "
        f"clipping only: {err['clip']['-']:.4f}",
        "  ".join(["mode".ljust(8), *(f"ε={e}".rjust(9) for e in eps)]),
        "  ".join(["z".ljust(8), *(f"{result['noise_multiplier'][e]:.3f}".rjust(9) for e in eps)]),
    ]
    for mode, row in err.items():
        if mode not in ("untrained", "none", "clip"):
            lines.append("  ".join([mode.ljust(8), *(f"{row[e]:.4f}".rjust(9) for e in eps)]))
    return "\n".join(lines)


def cmd_dp_utility(args: argparse.Namespace) -> int:
    """Entry point of ``metastream dp-utility``."""
    setup = PoisonSetup(
        honest=args.devices,
        attackers=0,
        held_out=args.held_out,
        rounds=args.rounds,
        clip=args.clip,
        seed=args.seed,
    )
    table = None
    if args.dataset is not None:
        from pipeline.tools.datasets import load_dataset

        table = load_dataset(args.dataset)
        setup = replace(setup, cfg=replace(setup.cfg, n_features=table.x.shape[1]))
    result = run_dp_utility(setup, tuple(args.epsilon), tuple(args.modes), args.delta, args.seeds, table)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``metastream dp-utility`` on an ``argparse`` sub-parsers object."""
    d = PoisonSetup()
    p = subparsers.add_parser(
        "dp-utility", help="k-shot error under differential privacy vs none (no broker)"
    )
    p.add_argument("--devices", type=int, default=d.honest, help="federated devices sending updates")
    p.add_argument("--held-out", type=int, default=d.held_out)
    p.add_argument("--rounds", type=int, default=d.rounds, help="contributions of each device")
    p.add_argument("--clip", type=float, default=d.clip, help="L2 norm bound per update")
    p.add_argument("--epsilon", type=float, nargs="+", default=list(EPSILONS))
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--modes", nargs="+", choices=("central", "local"), default=["central", "local"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--dataset", help="a real regression data set (air, wind or a CSV) instead of the synthetic fleet"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dp_utility)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.dp_utility")
    add_cli(parser.add_subparsers(dest="command", required=True))
    sys.exit(cmd_dp_utility(parser.parse_args(["dp-utility", *sys.argv[1:]])))
