"""Edge subscriber SDK: receive, verify and hot-swap per-device models (and θ).

The device side lives in the torch-free :mod:`metastream_edge` package (one
implementation for workers' tests, tools and devices); this module binds it
to the worker's :class:`~connectors.settings.Settings` and adds the
``metastream edge`` command.  Models arrive on the compacted
``settings.topic_models`` (key = device id, value = a signed
:mod:`metastream_edge.codec` payload); θ versions on ``settings.topic_meta``
under the key ``"__meta__"``.  Nothing here needs Faust.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from connectors.connection_check import check_connection
from connectors.settings import Settings
from metastream_edge.cli import follow
from metastream_edge.signing import Verifier
from metastream_edge.state import META_KEY, REFUSALS, Decision, EdgeState
from metastream_edge.subscriber import EdgeSubscriber as _Subscriber
from metastream_edge.subscriber import Received, Topics

__all__ = [
    "META_KEY",
    "REFUSALS",
    "Decision",
    "EdgeState",
    "EdgeSubscriber",
    "Received",
    "add_cli",
    "cmd_edge",
    "topics_of",
    "trusted_verifier",
]


def trusted_verifier(settings: Settings, key_files: Sequence[str] = ()) -> Verifier:
    """A verifier for ``key_files``, or else for ``settings.trusted_keys`` (comma-separated PEM files)."""
    paths = list(key_files) or [p.strip() for p in settings.trusted_keys.split(",") if p.strip()]
    if not paths:
        raise ValueError("no trusted public keys: pass --trusted-key or set METASTREAM_TRUSTED_KEYS")
    return Verifier.from_files(*paths)


def topics_of(settings: Settings) -> Topics:
    """The models, meta and deltas topics of ``settings``."""
    return Topics(settings.topic_models, settings.topic_meta, settings.topic_deltas)


class EdgeSubscriber(_Subscriber):
    """:class:`metastream_edge.subscriber.EdgeSubscriber` configured from :class:`Settings`.

    Parameters
    ----------
    settings : Settings
        Broker, topics and TLS/SASL options.
    devices : iterable of str
        Device ids to follow.
    verifier : Verifier, optional
        Trusted keys; default :func:`trusted_verifier` of ``settings``.
    follow_meta : bool
        Also follow θ on the meta topic.
    log_size : int
        How many recent messages :attr:`received` keeps.
    root : Verifier, optional
        The root key that signs key sets (rotation and revocation of ``verifier``'s keys).
    """

    def __init__(
        self,
        settings: Settings,
        devices: Iterable[str],
        verifier: Verifier | None = None,
        follow_meta: bool = False,
        log_size: int = 10_000,
        root: Verifier | None = None,
    ) -> None:
        self.settings = settings
        devices = list(devices)
        if not devices and not follow_meta:
            raise ValueError("an edge subscriber needs at least one device (or follow_meta=True)")
        verifier = verifier or trusted_verifier(settings)
        check_connection(settings)  # a refused password or CA: a clear error now, not a 30 s timeout
        super().__init__(
            settings.bootstrap,
            devices,
            verifier,
            topics_of(settings),
            follow_meta=follow_meta,
            log_size=log_size,
            client_id=f"{settings.app_id}-edge",
            security=settings.kafka_python_security(),
            root=root,
        )


# -- command line ------------------------------------------------------------------------


def cmd_edge(args: argparse.Namespace) -> int:
    """Handler of ``metastream edge``: print every decision, then the running versions.

    On SIGTERM it first prints a summary: accepted and refused counts (by reason) and versions.
    """
    settings = Settings.load(args.settings, broker=args.broker)
    verifier = trusted_verifier(settings, args.trusted_key or ())
    root = Verifier.from_files(*args.root_key) if args.root_key else None
    with EdgeSubscriber(settings, args.device, verifier, follow_meta=args.follow_meta, root=root) as sub:
        return follow(sub, args.duration, follow_meta=args.follow_meta)


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``edge`` sub-command; returns its parser."""
    p = subparsers.add_parser("edge", help="follow, verify and hot-swap the models of some devices")
    p.add_argument("--settings", help="JSON settings file (else METASTREAM_* environment and defaults)")
    p.add_argument("--broker", help="kafka://host:port[,host:port]; overrides the settings")
    p.add_argument("--device", action="append", required=True, help="device id to follow; repeatable")
    p.add_argument(
        "--trusted-key", action="append", help="PEM public key to trust; repeatable (default: settings)"
    )
    p.add_argument(
        "--root-key",
        action="append",
        default=[],
        help="PEM public key that signs key sets (rotation and revocation of trusted keys); repeatable",
    )
    p.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C or SIGTERM)")
    p.add_argument("--follow-meta", action="store_true", help="also follow θ on the meta topic")
    p.set_defaults(func=cmd_edge)
    return p
