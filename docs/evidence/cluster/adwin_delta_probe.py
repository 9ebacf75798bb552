"""Exploratory probe, not a test: share of abrupt drifts detected within 30 readings with ADWIN's ``delta``.

Usage: ``PYTHONPATH=edge .venv/bin/python evidence/adwin_delta_probe.py DELTA`` (reptile, seed 0,
clustered fleet of 4 kinds and the default fleet).
"""

from __future__ import annotations

import sys

import torch
from learners.drift_delay import detection_delays, share_within
from river import base, drift

import learners.drift as ld
from learners.config import DetectorName, LearnerConfig
from learners.evaluation.replay import default_batch_size
from learners.evaluation.synthetic import make_fleet_stream
from learners.strategies import make_strategy

DELTA = float(sys.argv[1])
_original = ld.make_detector


def _detector(name: DetectorName, seed: int = 0) -> base.DriftDetector:
    return drift.ADWIN(clock=8, delta=DELTA) if name == "adwin" else _original(name, seed)


ld.make_detector = _detector
torch.set_num_threads(1)
for clusters in (4, 0):
    s = make_fleet_stream(n_devices=50, n_readings=30000, gradual_share=0.0, seed=0, clusters=clusters)
    learner = make_strategy("reptile", LearnerConfig(n_features=s.x.shape[1], seed=0))
    delays = detection_delays(learner, s, default_batch_size(50))
    print(DELTA, clusters, share_within(delays), sum(d is not None for d in delays))
