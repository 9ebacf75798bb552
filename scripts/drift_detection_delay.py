"""Share of abrupt drifts detected within 30 readings, on seeded synthetic fleets.

Each fleet is :func:`learners.evaluation.synthetic.make_fleet_stream` with abrupt drifts
only (larger than three times the noise: a drift flips the gain's sign, or
with ``--clusters K`` moves the device to another kind); every strategy is
replayed on it and :func:`learners.evaluation.drift_delay.detection_delays` measures
how many of each device's readings pass between the change and the end of
the micro-batch that reports it.

Usage: ``python scripts/drift_detection_delay.py [--clusters 4] [--seeds 0,1,2] [--strategy reptile]``
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from learners.config import LearnerConfig
from learners.evaluation.drift_delay import WITHIN, detection_delays, share_within
from learners.evaluation.replay import default_batch_size
from learners.evaluation.synthetic import make_fleet_stream
from learners.strategies import make_strategy


def main() -> None:
    """Print one line per strategy × seed, and the pooled share per strategy."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clusters", type=int, default=4)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--readings", type=int, default=30_000)
    p.add_argument("--strategy", action="append")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"clusters={a.clusters} devices={a.devices} readings={a.readings}, abrupt drifts, noise 0.1")
    print("strategy  seed  drifts  detected  within30  median_delay")
    for name in a.strategy or ["reptile"]:
        pooled: list[int | None] = []
        for seed in (int(s) for s in a.seeds.split(",")):
            stream = make_fleet_stream(
                n_devices=a.devices, n_readings=a.readings, gradual_share=0.0, seed=seed, clusters=a.clusters
            )
            learner = make_strategy(name, LearnerConfig(n_features=stream.x.shape[1], seed=seed))
            delays = detection_delays(learner, stream, default_batch_size(a.devices))
            pooled += delays
            found = [d for d in delays if d is not None]
            median = float(np.median(found)) if found else float("nan")
            print(
                f"{name:<9} {seed:<5} {len(delays):<7} {len(found):<9} "
                f"{share_within(delays):<9.1%} {median:.0f}"
            )
        print(f"{name:<9} all   {len(pooled):<7} share detected within {WITHIN}: {share_within(pooled):.1%}")


if __name__ == "__main__":
    main()
