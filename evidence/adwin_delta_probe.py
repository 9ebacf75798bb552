# Exploratory probe (not a test): the share of abrupt drifts detected within 30 readings with ADWIN(clock=8, delta=argv[1]).
import sys, torch
from river import drift
import learners.drift as ld

delta = float(sys.argv[1])
orig = ld.make_detector
ld.make_detector = lambda name, seed=0: (
    drift.ADWIN(clock=8, delta=delta) if name == "adwin" else orig(name, seed)
)
from learners.config import LearnerConfig
from learners.strategies import make_strategy
from learners.synthetic import make_fleet_stream
from learners.replay import default_batch_size
from learners.drift_delay import detection_delays, share_within

torch.set_num_threads(1)
for clusters in (4, 0):
    s = make_fleet_stream(n_devices=50, n_readings=30000, gradual_share=0.0, seed=0, clusters=clusters)
    L = make_strategy("reptile", LearnerConfig(n_features=s.x.shape[1], seed=0))
    d = detection_delays(L, s, default_batch_size(50))
    fa = 0
    print(delta, clusters, share_within(d), sum(x is not None for x in d))
