"""Federated mode on the wire: raw readings stay on the device, only φ − θ leaves it.

The device follows θ on the meta topic (verified like any model), learns on
its own readings (:class:`~metastream_edge.learner.OnDeviceLearner`), and
sends ``φ − θ`` with its sample count to the deltas topic, in the deltas
format of :func:`metastream_edge.codec.encode_deltas`; the meta agent
aggregates it with the same Reptile code as workers' contributions.  With a
device signing key the payload goes out sealed (:meth:`Signer.seal`), so an
agent that only takes contributions from allow-listed device keys can check
whose it is.  :meth:`FederatedClient.save` keeps the learner's state on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
from kafka import KafkaProducer

from metastream_edge.codec import DeltaHeader, encode_deltas
from metastream_edge.learner import EdgeConfig, OnDeviceLearner
from metastream_edge.persist import load_state, save_state
from metastream_edge.signing import Signer, Verifier
from metastream_edge.subscriber import EdgeSubscriber, Topics


def contribution_payload(
    device_id: str, device: OnDeviceLearner, signer: Signer | None = None
) -> bytes | None:
    """The device's next deltas message (``φ − θ`` and its reading count), sealed if it has a key.

    ``None`` while the device has no θ or too few new readings (see
    :meth:`~metastream_edge.learner.OnDeviceLearner.contribution`).

    Examples
    --------
    >>> from metastream_edge.codec import decode_deltas
    >>> cfg = EdgeConfig(n_features=1, hidden=(2,), adapt_after=4, buffer_size=4)
    >>> device = OnDeviceLearner(cfg)
    >>> device.set_theta({"0.weight": np.ones((2, 1)), "0.bias": np.zeros(2),
    ...                   "2.weight": np.ones((1, 2)), "2.bias": np.zeros(1)}, version=3)
    >>> contribution_payload("dev-1", device) is None   # no readings yet
    True
    >>> _ = device.observe(np.arange(6.0)[:, None], np.arange(6.0))
    >>> deltas, weights, header = decode_deltas(contribution_payload("dev-1", device))
    >>> deltas.shape, weights.tolist(), header.source, header.base_meta_version
    ((1, 7), [6.0], 'edge:dev-1', 3)
    """
    if device.theta is None or device.theta_version is None:
        return None
    update = device.contribution()
    if update is None:
        return None
    delta, n = update
    payload = encode_deltas(
        delta[None, :],
        np.array([float(n)]),
        DeltaHeader(f"edge:{device_id}", device.theta_version, delta.size),
    )
    return payload if signer is None else signer.seal(payload)


class FederatedClient:
    """One federated device: local readings in, deltas out, θ followed.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port]``.
    device_id : str
        This device.
    verifier : Verifier
        Keys trusted for θ (and the device's own model).
    cfg : EdgeConfig
        The fleet's model family and learning settings.
    topics : Topics
        The fleet's topic names.
    signer : Signer, optional
        The device's own key: deltas are sealed with it.
    state_path : path, optional
        Where the learner's state is saved (:meth:`save`) and resumed from.
    security : mapping
        TLS/SASL options in kafka-python's spelling.
    """

    def __init__(
        self,
        bootstrap: str,
        device_id: str,
        verifier: Verifier,
        cfg: EdgeConfig,
        topics: Topics | None = None,
        signer: Signer | None = None,
        state_path: str | Path | None = None,
        security: Mapping[str, Any] | None = None,
        client_id: str = "metastream-edge",
        subscriber: EdgeSubscriber | None = None,
    ) -> None:
        self.device_id = device_id
        self.topics = topics or Topics()
        self.signer = signer
        self.state_path = None if state_path is None else Path(state_path)
        resumed = None if self.state_path is None else load_state(self.state_path)
        self.device = resumed or OnDeviceLearner(cfg)
        self.subscriber = subscriber or EdgeSubscriber(
            bootstrap,
            [device_id],
            verifier,
            self.topics,
            follow_meta=True,
            client_id=client_id,
            security=security,
        )
        try:
            self.producer = KafkaProducer(
                bootstrap_servers=bootstrap, acks="all", client_id=client_id, **dict(security or {})
            )
        except BaseException:
            self.subscriber.close()
            raise
        self.sent = 0

    def refresh(self, poll_ms: int = 200) -> None:
        """Poll the broker; a newer accepted θ becomes the device's starting point."""
        self.subscriber.poll_once(poll_ms)
        theta = self.subscriber.state.theta
        if theta is not None and theta[1].model_version != self.device.theta_version:
            self.device.set_theta(theta[0], theta[1].model_version)

    def step(self, x: np.ndarray | None = None, y: np.ndarray | None = None, poll_ms: int = 200) -> bool:
        """Take new local readings, refresh θ, and send a delta when there is one to send.

        Readings are learnt from (predict-then-learn, drift, adaptation) once
        the device has θ, and only kept before.  Returns whether a delta was sent.
        """
        if x is not None and y is not None and len(y):
            if self.device.params is None:
                self.device.observe(x, y)
            else:
                self.device.learn(x, y)
        self.refresh(poll_ms)
        payload = contribution_payload(self.device_id, self.device, self.signer)
        if payload is None:
            return False
        self.producer.send(self.topics.deltas, key=self.device_id.encode(), value=payload).get(timeout=30)
        self.sent += 1
        return True

    @property
    def theta_version(self) -> int | None:
        """Version of the θ this device last saw."""
        theta = self.subscriber.state.theta
        return None if theta is None else theta[1].model_version

    def save(self) -> None:
        """Save the learner's state atomically to ``state_path`` (a no-op without one)."""
        if self.state_path is not None:
            save_state(self.device, self.state_path)

    def close(self) -> None:
        """Save the state, flush and close the Kafka clients."""
        self.save()
        self.producer.close()
        self.subscriber.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
