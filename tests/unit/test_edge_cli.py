"""The edge's operator output: a summary when SIGTERM stops it."""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Callable

import numpy as np

from learners import LearnerConfig
from learners.fleet import FleetLearner
from metastream_edge.cli import follow
from metastream_edge.signing import Signer, Verifier
from metastream_edge.state import Decision, EdgeState


class FakeSubscriber:
    """Offers fixed envelopes to a real EdgeState, then waits for a signal (in-memory, no broker)."""

    def __init__(self, state: EdgeState, offers: list[tuple[str, bytes]]) -> None:
        self.state = state
        self.offers = offers

    def run(
        self, timeout_s: float | None = None, on_decision: Callable[[Decision], None] | None = None
    ) -> None:
        for key, envelope in self.offers:
            decision = self.state.offer(key, envelope)
            if on_decision is not None:
                on_decision(decision)
        os.kill(os.getpid(), signal.SIGTERM)  # what systemd sends on `systemctl stop`
        signal.sigtimedwait([], 0.1)  # let the handler run
        raise AssertionError("SIGTERM did not stop the run")


def test_sigterm_prints_a_summary_of_decisions_and_versions() -> None:
    # Prepare: one good model, one of another device under this key, one unsigned
    signer = Signer.generate()
    fleet = FleetLearner(LearnerConfig(n_features=2))
    for d in ("dev-1", "dev-2"):
        fleet.learn_predict([d, d], np.ones((2, 2)), np.array([1.0, 2.0]))
    offers = [
        ("dev-1", signer.seal(fleet.export("dev-1", 3))),
        ("dev-1", signer.seal(fleet.export("dev-2", 4))),
        ("dev-1", fleet.export("dev-1", 5)),
    ]
    sub = FakeSubscriber(EdgeState(Verifier([signer.public_key]), ["dev-1"]), offers)
    out = io.StringIO()
    before = signal.getsignal(signal.SIGTERM)
    # Execute
    code = follow(sub, None, out)  # type: ignore[arg-type]
    # Assert
    assert code == 0
    assert out.getvalue().splitlines() == [
        "dev-1 v3 accepted",
        "dev-1 v4 refused wrong_device (a model of dev-2)",
        "dev-1 v? refused unsigned",
        "stopped by SIGTERM: accepted 1, refused 2 (unsigned 1, wrong_device 1); running dev-1 v3, θ -",
        "running versions: dev-1 v3",
    ]
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is only installed while following
