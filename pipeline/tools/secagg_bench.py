"""CPU cost of a secure-aggregation round (in process, no broker): ``python -m pipeline.tools.secagg_bench``.

Runs one round of :mod:`metastream_edge.secagg` with ``--devices`` devices,
``--params`` parameters each and ``--drop`` devices vanishing after sharing,
and prints the seconds per phase: one device's work (mean over devices) and
the aggregator's, plus the bytes one device sends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def bench(devices: int, params: int, drop: int, seed: int = 0) -> dict[str, Any]:
    """Seconds per phase of one round (devices: mean per device; aggregator: total)."""
    from metastream_edge.secagg import AggregateResult, AggregatorRound, DeviceRound, FakeClock, RoundConfig
    from metastream_edge.secagg_wire import encode

    threshold = devices // 2 + 1
    if devices - drop < threshold:
        raise ValueError(f"{drop} drop-outs leave fewer than the threshold {threshold} of {devices}")
    config = RoundConfig("bench", n_params=params, threshold=threshold, phase_timeout_s=1.0)
    ids = [f"dev-{i:05d}" for i in range(devices)]
    rng = np.random.default_rng(seed)
    clock = FakeClock()
    dev = {d: DeviceRound(d, config) for d in ids}  # OS randomness for keys: timing does not depend on it
    server = AggregatorRound(config, ids, clock)
    spent: dict[str, float] = {}
    sent = 0

    def timed(name: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return out

    for d in ids:
        advert = timed("device advertise", dev[d].advertise)
        sent += len(encode(advert, "bench"))
        timed("aggregator", server.receive_advert, advert)
    roster = timed("aggregator", server.step)
    for d in ids:
        shares = timed("device share_keys", dev[d].share_keys, roster)
        sent += len(encode(shares, "bench"))
        timed("aggregator", server.receive_shares, d, shares)
    inbox = timed("aggregator", server.step)
    alive = ids[drop:]
    for d in alive:
        masked = timed("device masked_input", dev[d].masked_input, inbox[d], rng.normal(0, 0.1, params), 10.0)
        sent += len(encode(masked, "bench"))
        timed("aggregator", server.receive_masked, masked)
    clock.now += 1.0
    request = timed("aggregator", server.step)
    for d in alive:
        answer = timed("device unmask", dev[d].unmask, request)
        sent += len(encode(answer, "bench"))
        timed("aggregator", server.receive_unmask, answer)
    result = timed("aggregator", server.step)
    assert isinstance(result, AggregateResult)
    per_device = {
        k: round(v / (len(alive) if k in ("device masked_input", "device unmask") else devices), 4)
        for k, v in spent.items()
        if k.startswith("device")
    }
    return {
        "devices": devices,
        "params": params,
        "dropped": drop,
        "threshold": threshold,
        "device_seconds": per_device,
        "aggregator_seconds": round(spent["aggregator"], 4),
        "bytes_sent_per_device": sent // devices,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.secagg_bench", description=__doc__)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--params", type=int, default=321, help="default: the 8→32→1 MLP")
    parser.add_argument("--drop", type=int, default=1, help="devices that vanish after sharing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(bench(args.devices, args.params, args.drop, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
