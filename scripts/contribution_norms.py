"""Honest meta-contribution norms and weights, per data set, and what the default bounds do to them.

Replays each data set (time order, the same micro-batches as ``metastream
evaluate``) through the reptile fleet learner with its default settings and
records every contribution row *before* bounding: its L2 norm, its claimed
weight, and the bound the default rule (:mod:`learners.bounds`) gave it.
It also runs the θ sanity check (:mod:`learners.theta_check`) on every
honest meta-update, on readings sampled from the fleet's buffers as a
worker's meta agent does, and reports how many it would refuse and the
candidate/current k-shot loss ratios.

    .venv/bin/python scripts/contribution_norms.py synthetic air wind watch
    .venv/bin/python scripts/contribution_norms.py air --json

Needs the data sets of ``make datasets`` for air, wind and watch.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

from learners.config import LearnerConfig
from learners.evaluation.replay import default_batch_size, replay
from learners.fleet import FleetLearner
from learners.meta import MetaLearner, Proposal
from learners.theta_check import check_theta, sample_held_back
from pipeline.tools.datasets import load_dataset


def measure(name: str, seed: int, max_readings: int | None) -> dict[str, Any]:
    """Norm and weight statistics of every honest contribution row of one data set."""
    data = load_dataset(name, seed=seed)
    n = len(data) if max_readings is None else min(len(data), max_readings)
    order = np.argsort(data.time[:n], kind="stable")
    ids = [data.device_ids[i] for i in order]
    cfg = LearnerConfig(
        n_features=data.x.shape[1],
        task=data.task,
        n_classes=max(len(data.classes), 2),
        seed=seed,
    )
    fleet = FleetLearner(cfg, init="reptile")
    meta = fleet._meta
    assert meta is not None
    rows: list[tuple[float, float, float, float]] = []
    ratios: list[float] = []
    refused: list[str] = []
    propose = meta.propose
    rng = np.random.default_rng(seed)

    def recording(deltas: torch.Tensor, weights: torch.Tensor) -> Proposal:
        proposal = propose(deltas, weights)
        held = sample_held_back(fleet.buffers, len(fleet.devices), rng)
        check = check_theta(fleet.net, meta.theta, proposal.theta, held)
        if check.reason in ("ok", "worse"):
            ratios.append(check.candidate_loss / max(check.current_loss, 1e-12))
        if not check.accepted:
            refused.append(check.reason)
        b = proposal.bounded
        for norm, w in zip(deltas.norm(dim=1).tolist(), weights.tolist(), strict=True):
            rows.append((norm, w, b.clip, b.weight_cap))
        return proposal

    meta.propose = recording  # type: ignore[method-assign]  # measurement hook
    replay(fleet, ids, data.x[order], data.y[order], data.task, default_batch_size(len(set(ids))))
    out = summarise(name, rows, meta)
    r = np.array(ratios) if ratios else np.full(1, np.nan)
    out["theta_checks"] = len(ratios)
    out["theta_would_refuse"] = len(refused)
    out["loss_ratio"] = {f"p{q}": round(float(np.percentile(r, q)), 4) for q in (10, 50, 90, 99)}
    return out


def summarise(name: str, rows: list[tuple[float, float, float, float]], meta: MetaLearner) -> dict[str, Any]:
    norms, weights, clips, caps = (np.array(c) for c in zip(*rows, strict=True))
    kept = np.minimum(norms, clips)

    def pct(a: np.ndarray) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(a, q)), 4) for q in (10, 50, 90, 99)} | {
            "max": round(float(a.max()), 4)
        }

    return {
        "dataset": name,
        "rows": len(rows),
        "meta_steps": meta.version,
        "norm": pct(norms),
        "weight": pct(weights),
        "adaptive_bound": pct(clips),
        "clipped_share": round(float((norms > clips).mean()), 4),
        "norm_mass_kept": round(float(kept.sum() / norms.sum()), 4),
        "capped_weight_share": round(float((weights > caps).mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+", help="synthetic | air | wind | watch | CSV path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-readings", type=int)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.datasets:
        out = measure(name, args.seed, args.max_readings)
        if args.json:
            print(json.dumps(out), flush=True)
        else:
            print(f"{name}: {out['rows']} rows, {out['meta_steps']} meta steps")
            for key in ("norm", "weight", "adaptive_bound", "loss_ratio"):
                print(f"  {key:15s} " + "  ".join(f"{k}={v:g}" for k, v in out[key].items()))
            print(
                f"  clipped rows {out['clipped_share']:.2%}, norm mass kept {out['norm_mass_kept']:.2%}, "
                f"capped weights {out['capped_weight_share']:.2%}; θ check would refuse "
                f"{out['theta_would_refuse']} of {out['theta_checks']} honest θ",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
