"""Every format that crosses a wire or a disk, in one layer below ``learners/`` and ``connectors/``.

- :mod:`wire.readings`: reading messages (single or gateway batch), their
  validation, and dead letters;
- :mod:`wire.events`: the typed events the worker core returns (drift,
  adapted, adaptation result, rejected, evicted, θ refused) and their JSON;
- :mod:`wire.messages`: the other messages the core returns (signed model
  updates, meta contributions, θ versions) with their keys and headers;
- :mod:`wire.models`: model and deltas payloads (safetensors), torch side of
  the device package's numpy codec :mod:`metastream_edge.codec`;
- :mod:`wire.checkpoint`: device records, checkpoint chunks and manifests.

It imports only the standard library, numpy, safetensors, torch and the
device package ``metastream_edge``: never the learning code, the runtime or a
network library.
"""
