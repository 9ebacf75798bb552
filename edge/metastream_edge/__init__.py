"""metastream-edge: the device side of metastream in numpy (no torch, Faust or River).

Modules: :mod:`~metastream_edge.codec` (model and deltas payloads),
:mod:`~metastream_edge.signing` (Ed25519 envelopes), :mod:`~metastream_edge.state`
(verify and hot-swap), :mod:`~metastream_edge.subscriber` (kafka-python),
:mod:`~metastream_edge.mlp` (forward, backward, adaptation),
:mod:`~metastream_edge.learner` (on-device learning with drift detection),
:mod:`~metastream_edge.persist` (atomic local state),
:mod:`~metastream_edge.federated` (only φ − θ leaves the device).
"""

__version__ = "0.1.0"
