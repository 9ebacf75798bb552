"""Detection delays against the known change points of a synthetic fleet, and the clustered fleet itself."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learners.base import StepResult
from learners.evaluation.drift_delay import detection_delays, share_within
from learners.evaluation.synthetic import DriftPoint, FleetStream, make_fleet_stream


class ReportsAt:
    """A stand-in strategy that reports a device's drift at given readings of that device (1-based)."""

    name = "stub"

    def __init__(self, at: dict[str, set[int]]) -> None:
        self.at = at
        self.seen: dict[str, int] = {}

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        drifted = []
        for d in device_ids:
            self.seen[d] = self.seen.get(d, 0) + 1
            if self.seen[d] in self.at.get(d, set()):
                drifted.append(d)
        return StepResult(y_pred=np.zeros(len(y)), drifted=drifted)


def test_delays_count_readings_from_the_change_to_the_reporting_batch() -> None:
    # Prepare: a, b alternate; a changes at its reading 10 (0-based), b at 20, c's drift is gradual
    ids = ["a", "b", "c"] * 40
    truth = [
        DriftPoint("a", 10, "abrupt", 1),
        DriftPoint("b", 20, "abrupt", 1),
        DriftPoint("c", 5, "gradual", 50),
    ]
    stream = FleetStream(ids, np.zeros((120, 1)), np.zeros(120), np.arange(120.0), "regression", truth)
    # a: a false alarm before the change, then one 4 readings in; b: never after its change
    strategy = ReportsAt({"a": {5, 15}, "b": {3}})
    # Execute: batches of 6 readings = 2 readings per device
    delays = detection_delays(strategy, stream, batch_size=6)
    # Assert: a's 15th reading ends a batch at 16 seen readings → 16 - 11 = 5
    assert delays == [5, None]
    assert share_within(delays, within=5) == 0.5 and share_within(delays, within=4) == 0.0


def test_clustered_fleet_moves_drifting_devices_to_another_kind() -> None:
    # Execute
    s = make_fleet_stream(n_devices=12, n_readings=3000, n_features=3, seed=3, clusters=3, noise=0.0)
    plain = make_fleet_stream(n_devices=12, n_readings=3000, n_features=3, seed=3)
    # Assert: kinds are dealt round robin, a drift changes the kind, who speaks when is plain's
    assert s.kinds[:, 0].tolist() == [0, 1, 2] * 4
    assert (s.kinds[:, 1] != s.kinds[:, 0]).all()
    assert s.device_ids == plain.device_ids and np.array_equal(s.x, plain.x) and plain.kinds.size == 0
