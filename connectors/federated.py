"""Federated mode on the wire: an edge device that sends only φ − θ.

The device side is :class:`metastream_edge.federated.FederatedClient` (numpy,
no torch); this module configures it from the worker's
:class:`~connectors.settings.Settings`.  The device follows θ on the meta
topic (verified like any model), learns on its own readings, and sends the
change with its sample count to the deltas topic, where the meta agent
aggregates it with the same Reptile code as workers' contributions.
Each contribution is signed with the device's own key (``Signer.seal``; the
wire format is in :mod:`connectors.contributions`); the meta agent applies it
only if the device's public key is in its ``device_keys`` directory as
``<device_id>.pem``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from connectors.edge import EdgeSubscriber, topics_of
from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from metastream_edge.federated import FederatedClient
from metastream_edge.learner import EdgeConfig
from wire.readings import Reading


def edge_config(settings: Settings) -> EdgeConfig:
    """The device's learning settings from the fleet's (same model family, steps and buffer)."""
    cfg = settings.learner_config()
    return EdgeConfig(
        n_features=cfg.n_features,
        task=cfg.task,
        n_classes=cfg.n_classes,
        hidden=tuple(cfg.hidden),
        online_lr=cfg.online_lr,
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        buffer_size=cfg.buffer_size,
        adapt_after=cfg.adapt_after,
        cooldown=cfg.cooldown,
    )


class FederatedEdgeClient(FederatedClient):
    """One federated device: local readings in, deltas out, θ followed.

    Parameters
    ----------
    settings
        Broker, topics, learner settings.
    device_id
        This device.
    verifier
        Keys trusted for θ.
    signer, signing_key
        This device's own key, as a :class:`Signer` or the path of its PEM
        private key: every contribution is sealed with it (its public half goes
        into the meta agent's ``device_keys`` directory as ``<device_id>.pem``).
        The meta agent refuses unsigned contributions.
    state_path
        Where the device's learning state is saved atomically and resumed from.
    """

    def __init__(
        self,
        settings: Settings,
        device_id: str,
        verifier: Verifier | None = None,
        signing_key: str | Path | None = None,
        state_path: str | Path | None = None,
        *,
        signer: Signer | None = None,
    ) -> None:
        if signer is None and signing_key is not None:
            signer = Signer.from_file(signing_key)
        self.settings = settings
        subscriber = EdgeSubscriber(settings, [device_id], verifier, follow_meta=True)
        super().__init__(
            settings.bootstrap,
            device_id,
            subscriber.state.verifier,
            edge_config(settings),
            topics_of(settings),
            signer=signer,
            state_path=state_path,
            security=settings.kafka_python_security(),
            client_id=f"{settings.app_id}-edge",
            subscriber=subscriber,
        )

    def step(  # type: ignore[override]  # takes wire readings, not arrays
        self, readings: Iterable[Reading] = (), poll_ms: int = 200
    ) -> bool:
        """Take new local readings, refresh θ, and send a delta when there is one to send."""
        batch = list(readings)
        if not batch:
            return super().step(poll_ms=poll_ms)
        x = np.array([r.x for r in batch], dtype=np.float64)
        y = np.array([r.y for r in batch], dtype=np.float64)
        return super().step(x, y, poll_ms)
