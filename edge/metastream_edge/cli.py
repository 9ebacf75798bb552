"""``metastream-edge``: the device's command line (follow, verify, hot-swap; a summary on SIGTERM)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import TextIO

from metastream_edge.signing import Verifier
from metastream_edge.state import META_KEY
from metastream_edge.subscriber import EdgeSubscriber, Topics


class Terminated(Exception):
    """SIGTERM arrived (systemd, Kubernetes and ``kill`` stop a device process this way)."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (in the main thread) instead of killing."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def follow(
    sub: EdgeSubscriber,
    duration_s: float | None,
    out: TextIO | None = None,
    follow_meta: bool = False,
) -> int:
    """Print every decision until ``duration_s`` passed, Ctrl-C or SIGTERM; then the running versions.

    On SIGTERM a summary line (accepted/refused counts by reason, versions) comes first.
    """
    stream = out or sys.stdout

    def line(text: str) -> None:
        print(text, file=stream, flush=True)

    terminated = False
    with sigterm_raises():
        try:
            sub.run(timeout_s=duration_s, on_decision=lambda d: line(str(d)))
        except KeyboardInterrupt:  # Ctrl-C is the normal stop without a duration
            pass
        except Terminated:
            terminated = True
    if terminated:
        line(f"stopped by SIGTERM: {sub.state.summary()}")
    versions = sub.state.versions()
    if follow_meta:
        versions[META_KEY] = sub.state.version(META_KEY)
    running = ", ".join(f"{d} {'-' if v is None else f'v{v}'}" for d, v in versions.items())
    line(f"running versions: {running}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``metastream-edge`` parser."""
    p = argparse.ArgumentParser(
        prog="metastream-edge", description="Follow, verify and hot-swap the models of some devices."
    )
    p.add_argument("--broker", required=True, help="host:port[,host:port] (a kafka:// prefix is allowed)")
    p.add_argument("--device", action="append", default=[], help="device id to follow; repeatable")
    p.add_argument("--trusted-key", action="append", required=True, help="PEM public key; repeatable")
    p.add_argument(
        "--root-key",
        action="append",
        default=[],
        help="PEM public key that signs key sets (rotation and revocation of --trusted-key); repeatable",
    )
    p.add_argument("--topic-prefix", default="metastream", help="topics <prefix>.models / .meta / .deltas")
    p.add_argument("--follow-meta", action="store_true", help="also follow θ on the meta topic")
    p.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C or SIGTERM)")
    p.add_argument("--security-protocol", default="PLAINTEXT", help="PLAINTEXT, SSL, SASL_SSL, …")
    p.add_argument("--ssl-cafile", help="CA bundle (PEM) for TLS")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``metastream-edge``."""
    args = build_parser().parse_args(argv)
    security: dict[str, str] = {"security_protocol": args.security_protocol.upper()}
    if args.ssl_cafile:
        security["ssl_cafile"] = args.ssl_cafile
    bootstrap = ",".join(part.split("://", 1)[-1] for part in args.broker.split(","))
    verifier = Verifier.from_files(*args.trusted_key)
    with EdgeSubscriber(
        bootstrap,
        args.device,
        verifier,
        Topics.with_prefix(args.topic_prefix),
        follow_meta=args.follow_meta,
        security=security,
        root=Verifier.from_files(*args.root_key) if args.root_key else None,
    ) as sub:
        return follow(sub, args.duration, follow_meta=args.follow_meta)


if __name__ == "__main__":
    raise SystemExit(main())
