"""How many bytes a device costs in a checkpoint: ``python -m pipeline.tools.checkpoint_size``.

Feeds a seeded stream of ``--devices`` devices with ``--readings`` readings
each into a :class:`~pipeline.worker_core.WorkerCore` (no broker), takes a
checkpoint of every partition and prints the bytes written (signed chunks
plus manifests) per device, and the time the checkpoint took per device.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from connectors.settings import Settings
from connectors.signing import Signer
from pipeline.worker_core import WorkerCore
from wire.readings import Reading, encode_readings


def measure(devices: int, readings: int, settings: Settings, seed: int = 0) -> dict[str, Any]:
    """Checkpoint bytes and time per device after ``readings`` readings of each of ``devices`` devices.

    Examples
    --------
    >>> m = measure(devices=50, readings=3, settings=Settings(n_features=2, partitions=1))
    >>> m["devices"], m["chunks"], 1000 < m["bytes_per_device"] < 10_000
    (50, 1, True)
    """
    core = WorkerCore(replace_bound(settings, devices), Signer.generate(), clock=lambda: 0.0)
    rng = np.random.default_rng(seed)
    ids = [f"dev-{i:06d}" for i in range(devices)]
    nf, offset = settings.n_features, 0
    for _ in range(readings):
        x = rng.normal(size=(devices, nf)).tolist()
        y = rng.normal(size=devices).tolist()
        batch = [Reading(d, tuple(xi), yi) for d, xi, yi in zip(ids, x, y, strict=True)]
        step = settings.core_batch_readings
        for start in range(0, devices, step):
            core.on_readings([(encode_readings(batch[start : start + step]), 0, offset)])
            offset += 1
    began = time.perf_counter()
    taken = core.checkpoint()
    manifests = [core.seal_manifest(ck, list(range(len(ck.chunks)))) for ck in taken]
    seconds = time.perf_counter() - began
    chunk_bytes = sum(len(payload) for ck in taken for _, _, payload, _ in ck.chunks)
    total = chunk_bytes + sum(len(m) for m in manifests)
    return {
        "devices": devices,
        "readings_per_device": readings,
        "n_features": nf,
        "chunks": sum(len(ck.chunks) for ck in taken),
        "bytes": total,
        "bytes_per_device": round(total / devices),
        "ms_per_device": round(seconds * 1000 / devices, 4),
    }


def replace_bound(settings: Settings, devices: int) -> Settings:
    """``settings`` with every device resident (the size does not depend on where a record comes from)."""
    return Settings(**{**settings.__dict__, "max_devices": max(settings.max_devices, devices)})


def main(argv: list[str] | None = None) -> None:
    """Print :func:`measure` as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--readings", type=int, default=40, help="readings per device (fills its ring buffer)")
    p.add_argument("--n-features", type=int, default=Settings().n_features)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = Settings(n_features=args.n_features, partitions=1)
    print(json.dumps(measure(args.devices, args.readings, settings, args.seed)))


if __name__ == "__main__":
    main()
