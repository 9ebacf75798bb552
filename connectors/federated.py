"""Federated mode on the wire: an edge device that sends only φ − θ.

The device follows θ on the meta topic (verified like any model), adapts
it on its own readings with :class:`learners.federated.FederatedDevice`, and
sends the change with its sample count to the deltas topic, where the meta
agent aggregates it with the same Reptile code as workers' contributions.
Each contribution is signed with the device's own key (``Signer.seal``; the
wire format is in :mod:`connectors.contributions`); the meta agent applies it
only if the device's public key is in its ``device_keys`` directory as
``<device_id>.pem``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from kafka import KafkaProducer

from connectors.edge import EdgeSubscriber
from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from connectors.wire import Reading
from learners.codec import DeltaHeader, encode_deltas
from learners.federated import FederatedDevice


class FederatedEdgeClient:
    """One federated device: local readings in, deltas out, θ followed.

    Parameters
    ----------
    settings
        Broker, topics, learner settings.
    device_id
        This device.
    verifier
        Keys trusted for θ.
    signer
        This device's own key: signs every contribution (its public half goes
        into the meta agent's ``device_keys`` directory as ``<device_id>.pem``).
    """

    def __init__(
        self, settings: Settings, device_id: str, verifier: Verifier | None = None, *, signer: Signer
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.signer = signer
        self.device = FederatedDevice(settings.learner_config())
        self.subscriber = EdgeSubscriber(settings, [device_id], verifier, follow_meta=True)
        self.producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap, acks="all", **settings.kafka_python_security()
        )
        self.sent = 0

    def step(self, readings: Iterable[Reading], poll_ms: int = 200) -> bool:
        """Take new local readings, refresh θ, and send a delta when there is one to send."""
        batch = list(readings)
        if batch:
            self.device.observe(np.array([r.x for r in batch]), np.array([r.y for r in batch]))
        self.subscriber.poll_once(poll_ms)
        theta = self.subscriber.state.theta
        if theta is None:
            return False
        params, header = theta
        update = self.device.update(params)
        if update is None:
            return False
        delta, n = update
        payload = encode_deltas(
            delta.unsqueeze(0),
            torch.tensor([float(n)]),
            DeltaHeader(f"edge:{self.device_id}", header.model_version, delta.numel()),
        )
        signed = self.signer.seal(payload)
        self.producer.send(self.settings.topic_deltas, key=self.device_id.encode(), value=signed).get(
            timeout=30
        )
        self.sent += 1
        return True

    @property
    def theta_version(self) -> int | None:
        """Version of the θ this device last saw."""
        theta = self.subscriber.state.theta
        return None if theta is None else theta[1].model_version

    def close(self) -> None:
        """Flush and close the Kafka clients."""
        self.producer.close()
        self.subscriber.close()
