"""Poisoned federated updates: how far can a few attackers push θ, and does robust aggregation hold?

``metastream poison`` runs a seeded experiment on the pure core (no broker).
Honest federated devices from the synthetic fleet adapt θ on their own
readings and send ``(φ − θ, readings)`` exactly as
:class:`learners.federated.FederatedDevice` does on the edge; ``k``
attackers do the same on their own data but send the delta multiplied by a
factor (``-10``: sign-flipped and scaled; ``100``: scaled) with their
reading count inflated, or (``forged``) issue #12's forgery: every delta
``1e4`` with a claimed weight of ``1e30``.  The meta agent's aggregation
(:class:`learners.meta.MetaLearner`) runs as a plain weighted mean, with a
fixed per-device clip, with a trimmed mean, with both, or with the
deployment's defaults (``adaptive``: norms clipped to a multiple of the
running median of accepted norms, claimed weights capped, see
:mod:`learners.bounds`), alone or with a trimmed mean, for ``R`` rounds.

Signatures are not part of this experiment: it asks what a device whose key
*is* allowed (a compromised one) can do.  Nor is the θ check of the meta
agent (:mod:`learners.theta_check`), which needs a worker's readings.

θ's error is the k-shot error of held-out devices (never seen in training):
each one adapts θ on its first ``adapt_after`` readings, exactly like a
federated device, and is scored (MAE, original units) on the readings that
follow.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from learners.bounds import check_secure_sum
from learners.config import LearnerConfig
from learners.evaluation.synthetic import make_fleet_stream
from learners.federated import FederatedDevice, update_all
from learners.meta import MetaLearner
from learners.nets import Params, init_params
from metastream_edge.dp import capped_weights, central_privatise, clip_to_norm, noise_on_sum

ATTACKS: dict[str, float | None] = {
    "none": None,
    "inflated": 1.0,
    "sign_flip": -10.0,
    "scaled": 100.0,
    "forged": None,
}
"""Attack name → factor the attackers multiply their honest delta by (``forged``: see :data:`FORGED`).

Every attack but ``none`` also inflates the claimed reading count (``inflated`` does only that)."""

FORGED = (1e4, 1e30)
"""Issue #12's forged contribution: every delta coordinate, and the claimed weight."""

AGGREGATORS = (
    "mean",
    "clip",
    "trim",
    "clip+trim",
    "capped",
    "adaptive",
    "adaptive+trim",
    "dp",
    "secagg",
    "secagg+dp",
)
"""How the meta agent combines the round's updates.

``adaptive`` is what it does by default (:meth:`MetaLearner.from_config`);
``capped`` caps each claimed weight at a real round's reading count;
``dp`` is central differential privacy (clip, capped weights, Gaussian
noise on the sum); ``secagg`` is what a secure-aggregation round yields:
only the sum of what devices send, so the clip and cap are each device's
own (an attacker skips them), and the meta agent refuses a round whose sum
shows a skipped clip or an inflated weight
(:func:`learners.bounds.check_secure_sum`); ``secagg+dp`` adds the
noise to that sum."""

_SUMMED = ("capped", "dp", "secagg", "secagg+dp")

if TYPE_CHECKING:
    from learners.evaluation.synthetic import FleetStream
    from pipeline.tools.csv_source import ReadingsTable


@dataclass(frozen=True)
class PoisonSetup:
    """One experiment's sizes and robust-aggregation settings.

    Parameters
    ----------
    honest, attackers, held_out
        Numbers of honest training devices, attackers and held-out devices.
    rounds
        Federated rounds; in each, every training device observes
        ``adapt_after`` new readings and sends one update.
    weight_inflation
        Attackers claim this many times their real reading count.
    clip
        L2 norm every update is clipped to (``clip`` and ``clip+trim``).
    trim
        Fraction dropped at each end of every coordinate (``trim`` and
        ``clip+trim``); at least ``attackers / (honest + attackers)`` to
        drop all of them.
    query
        Readings each held-out device is scored on after its support set.
    dp_noise
        Noise multiplier z of the ``dp`` aggregators: σ = z · clip on the sum.
    seed
        Seeds the fleet, θ and everything else.
    """

    honest: int = 20
    attackers: int = 3
    held_out: int = 20
    rounds: int = 20
    weight_inflation: float = 10.0
    clip: float = 1.0
    trim: float = 0.2
    query: int = 100
    dp_noise: float = 1.0
    seed: int = 0
    cfg: LearnerConfig = field(
        default_factory=lambda: LearnerConfig(n_features=8, adapt_after=16, buffer_size=16, meta_lr=0.5)
    )

    def __post_init__(self) -> None:
        if self.honest < 1 or self.attackers < 0 or self.held_out < 1 or self.rounds < 1:
            raise ValueError("need honest >= 1, attackers >= 0, held_out >= 1 and rounds >= 1")


class Fleet:
    """Every device's readings in its own order, cut from one synthetic stream or a real table.

    With a ``table`` (e.g. :func:`pipeline.tools.datasets.load_dataset`), the devices
    are its devices with enough readings, drawn at random (seeded); ``setup.cfg``
    must have the table's number of features.
    """

    def __init__(self, setup: PoisonSetup, table: ReadingsTable | None = None) -> None:
        n_devices = setup.honest + setup.attackers + setup.held_out
        per_device = max(setup.rounds * setup.cfg.adapt_after, setup.cfg.adapt_after + setup.query)
        source: ReadingsTable | FleetStream
        if table is None:
            source = make_fleet_stream(
                n_devices=n_devices,
                n_readings=int(n_devices * per_device * 1.5),
                n_features=setup.cfg.n_features,
                drifts_per_device=0,
                late_joiners=0.0,
                seed=setup.seed,
            )
        elif table.task != "regression":
            raise ValueError(f"the federated experiments need a regression data set, not {table.task}")
        else:
            source = table
        ids = np.asarray(source.device_ids)
        everyone = sorted(set(source.device_ids))
        self.x = {d: source.x[ids == d] for d in everyone}
        self.y = {d: source.y[ids == d] for d in everyone}
        long_enough = [d for d in everyone if len(self.y[d]) >= per_device]
        if len(long_enough) < n_devices:
            raise ValueError(
                f"{n_devices} devices with {per_device} readings each are needed; "
                f"{len(long_enough)} have that many: lower --rounds or the number of devices"
            )
        if len(long_enough) > n_devices:  # a real table: a seeded draw of its devices
            drawn = np.random.default_rng([setup.seed, 2]).permutation(len(long_enough))[:n_devices]
            long_enough = [long_enough[i] for i in sorted(drawn)]
        self.devices = long_enough
        rng = np.random.default_rng(setup.seed)
        order = [self.devices[i] for i in rng.permutation(len(self.devices))]
        self.honest = order[: setup.honest]
        self.attackers = order[setup.honest : setup.honest + setup.attackers]
        self.held_out = order[setup.honest + setup.attackers :]


def meta_learner(setup: PoisonSetup, aggregator: str) -> MetaLearner:
    """θ's meta-learner under one aggregator (``mean`` has no bounds at all)."""
    trim = setup.trim if "trim" in aggregator else 0.0
    theta = init_params(setup.cfg, setup.seed)
    if aggregator in _SUMMED:  # aggregated outside; θ takes the one summed row as is
        return MetaLearner(theta, setup.cfg.meta_lr, None, 0.0)
    if aggregator.startswith("adaptive"):
        return MetaLearner.from_config(theta, replace(setup.cfg, trim=trim))
    clip = setup.clip if "clip" in aggregator else None
    return MetaLearner(theta, setup.cfg.meta_lr, clip, trim)


def train_theta(setup: PoisonSetup, fleet: Fleet, aggregator: str, attack: str) -> Params:
    """θ after ``rounds`` federated rounds under one aggregator and one attack."""
    meta = meta_learner(setup, aggregator)
    rng = np.random.default_rng(setup.seed)
    factor = ATTACKS[attack]
    senders = fleet.honest + (fleet.attackers if attack != "none" else [])
    devices = {d: FederatedDevice(setup.cfg) for d in senders}
    m = setup.cfg.adapt_after
    for r in range(setup.rounds):
        for d in senders:
            devices[d].observe(fleet.x[d][r * m : (r + 1) * m], fleet.y[d][r * m : (r + 1) * m])
        updates = update_all([devices[d] for d in senders], meta.theta)
        deltas, weights = [], []
        for d, update in zip(senders, updates, strict=True):
            assert update is not None  # adapt_after new readings every round
            delta, n = update
            weight = float(n)
            if d in fleet.attackers and attack == "forged":
                delta, weight = torch.full_like(delta, FORGED[0]), FORGED[1]
            elif d in fleet.attackers:
                assert factor is not None
                delta, weight = delta * factor, weight * setup.weight_inflation
            deltas.append(delta)
            weights.append(weight)
        if aggregator in _SUMMED:
            meta.step(_summed(setup, aggregator, deltas, weights, senders, fleet, rng), torch.ones(1))
        else:
            meta.step(torch.stack(deltas), torch.tensor(weights))
    return meta.theta


def _summed(
    setup: PoisonSetup,
    aggregator: str,
    deltas: list[torch.Tensor],
    weights: list[float],
    senders: list[str],
    fleet: Fleet,
    rng: np.random.Generator,
) -> torch.Tensor:
    """The round's aggregated update ``[1, P]`` for the aggregators that only see (or make) one sum."""
    u = torch.stack(deltas).double().numpy()
    w = capped_weights(np.asarray(weights), float(setup.cfg.adapt_after))
    if aggregator == "capped":
        mean = (w[:, None] * u).sum(axis=0) / w.sum()
    elif aggregator == "dp":
        total, w_sum = central_privatise(u, w, setup.clip, setup.dp_noise, rng)
        mean = total / w_sum
    else:  # secure aggregation: honest devices clip and cap their own update, attackers do not
        attacker = np.array([d in fleet.attackers for d in senders])
        own_w = np.where(attacker, np.asarray(weights) / setup.cfg.adapt_after, w)
        own_u = np.stack(
            [row if bad else clip_to_norm(row, setup.clip) for row, bad in zip(u, attacker, strict=True)]
        )
        total = (own_w[:, None] * own_u).sum(axis=0)
        if (
            check_secure_sum(total / own_w.sum(), float(own_w.sum()), len(senders), setup.clip, 1.0)
            is not None
        ):
            return torch.zeros(1, u.shape[1])  # the meta agent refuses the round: θ stays
        if aggregator == "secagg+dp":
            total = noise_on_sum(total, setup.clip, setup.dp_noise, rng)
        mean = total / own_w.sum()
    return torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1)


def kshot_error(setup: PoisonSetup, fleet: Fleet, theta: Params) -> float:
    """Mean MAE of held-out devices adapted from θ on their first ``adapt_after`` readings."""
    m = setup.cfg.adapt_after
    devices = [FederatedDevice(setup.cfg) for _ in fleet.held_out]
    for d, device in zip(fleet.held_out, devices, strict=True):
        device.observe(fleet.x[d][:m], fleet.y[d][:m])
    update_all(devices, theta)
    errors = []
    for d, device in zip(fleet.held_out, devices, strict=True):
        xq, yq = fleet.x[d][m : m + setup.query], fleet.y[d][m : m + setup.query]
        errors.append(float(np.mean(np.abs(device.predict(xq) - yq))))
    return float(np.mean(errors))


def run_poison(
    setup: PoisonSetup,
    aggregators: tuple[str, ...] = AGGREGATORS,
    attacks: tuple[str, ...] = tuple(ATTACKS),
) -> dict[str, Any]:
    """θ's k-shot error for every aggregator × attack, plus θ before training.

    Examples
    --------
    >>> setup = PoisonSetup(honest=4, attackers=1, held_out=2, rounds=2, trim=0.2, query=20)
    >>> out = run_poison(setup, aggregators=("mean",), attacks=("none",))
    >>> sorted(out["error"]["mean"]), out["error"]["mean"]["none"] < out["untrained"]
    (['none'], True)
    """
    unknown = [a for a in aggregators if a not in AGGREGATORS] + [a for a in attacks if a not in ATTACKS]
    if unknown:
        choices = f"{AGGREGATORS}, {tuple(ATTACKS)}"
        raise ValueError(f"unknown aggregator or attack {unknown}; choose from {choices}")
    # Tiny models: one torch thread is many times faster than a team of them on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(setup, aggregators, attacks)
    finally:
        torch.set_num_threads(threads)


def _run(setup: PoisonSetup, aggregators: tuple[str, ...], attacks: tuple[str, ...]) -> dict[str, Any]:
    fleet = Fleet(setup)
    error = {
        agg: {
            att: _rounded(kshot_error(setup, fleet, train_theta(setup, fleet, agg, att))) for att in attacks
        }
        for agg in aggregators
    }
    return {
        "setup": {k: v for k, v in asdict(setup).items() if k != "cfg"},
        "attack_factors": {a: ATTACKS[a] for a in attacks},
        "untrained": round(kshot_error(setup, fleet, init_params(setup.cfg, setup.seed)), 4),
        "error": error,
    }


def _rounded(error: float) -> float | None:
    """4 decimals; ``None`` (JSON ``null``) when θ diverged to a non-finite error."""
    return round(error, 4) if np.isfinite(error) else None


def format_table(result: dict[str, Any]) -> str:
    """The error table as aligned text."""
    error: dict[str, dict[str, float]] = result["error"]
    attacks = list(next(iter(error.values())))
    s = result["setup"]
    lines = [
        f"θ's k-shot MAE on {s['held_out']} held-out devices after {s['rounds']} rounds: "
        f"{s['honest']} honest devices, {s['attackers']} attackers (weight ×{s['weight_inflation']:g}); "
        f"clip={s['clip']:g}, trim={s['trim']:g}, dp noise z={s['dp_noise']:g}",
        f"untrained θ: {result['untrained']:.4f}",
        "  ".join(["aggregator".ljust(13), *(a.rjust(10) for a in attacks)]),
    ]
    factors = result["attack_factors"]
    marks = [_mark(a, factors[a]) for a in attacks]
    lines.append("  ".join(["".ljust(13), *(m.rjust(10) for m in marks)]))
    for agg, row in error.items():
        cells = ["diverged" if row[a] is None else f"{row[a]:.4g}" for a in attacks]
        lines.append("  ".join([agg.ljust(13), *(c.rjust(10) for c in cells)]))
    return "\n".join(lines)


def _mark(attack: str, factor: float | None) -> str:
    if attack == "forged":
        return f"{FORGED[0]:g},w{FORGED[1]:g}"
    return "" if factor is None else f"×{factor:g}"


def cmd_poison(args: argparse.Namespace) -> int:
    """Entry point of ``metastream poison``."""
    setup = PoisonSetup(
        honest=args.honest,
        attackers=args.attackers,
        held_out=args.held_out,
        rounds=args.rounds,
        weight_inflation=args.weight_inflation,
        clip=args.clip,
        trim=args.trim,
        dp_noise=args.dp_noise,
        seed=args.seed,
    )
    result = run_poison(setup)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``metastream poison`` on an ``argparse`` sub-parsers object."""
    d = PoisonSetup()
    p = subparsers.add_parser("poison", help="poisoned federated updates vs robust aggregation (no broker)")
    p.add_argument("--attackers", type=int, default=d.attackers)
    p.add_argument("--honest", type=int, default=d.honest)
    p.add_argument("--held-out", type=int, default=d.held_out)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--weight-inflation", type=float, default=d.weight_inflation)
    p.add_argument("--clip", type=float, default=d.clip, help="L2 norm bound per update")
    p.add_argument("--trim", type=float, default=d.trim, help="fraction trimmed at each end per coordinate")
    p.add_argument("--dp-noise", type=float, default=d.dp_noise, help="noise multiplier of the dp rows")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_poison)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.poison")
    add_cli(parser.add_subparsers(dest="command", required=True))
    sys.exit(cmd_poison(parser.parse_args(["poison", *sys.argv[1:]])))
