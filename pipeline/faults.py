"""Test-only fault injection: a learner core that raises where the environment says.

``METASTREAM_INJECT_FAULT`` (read by :func:`pipeline.worker.run_worker`)
makes the worker's core raise :class:`InjectedFault` while learning:

- ``device=<id>``: on every micro-batch holding a reading of that device
  (a message the learner can never take: a poison pill);
- ``reading=<n>``: once, when this process reaches its n-th learned reading.

Never set it in production; the worker logs a warning when it is set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from connectors.settings import Settings
from connectors.signing import Signer
from pipeline.worker_core import WorkerCore
from wire.messages import Message
from wire.readings import Reading

log = logging.getLogger(__name__)

ENV = "METASTREAM_INJECT_FAULT"


class InjectedFault(RuntimeError):
    """The failure :data:`ENV` asked for."""


class FaultyCore(WorkerCore):
    """A :class:`WorkerCore` whose learner raises on one device, or at one reading.

    Examples
    --------
    >>> from wire.readings import encode_readings
    >>> core = FaultyCore(Settings(n_features=1), Signer.generate(), device="bad")
    >>> core.on_readings([(encode_readings([Reading("bad", (1.0,), 1.0)]), 0, 0)])
    Traceback (most recent call last):
    ...
    pipeline.faults.InjectedFault: injected: a reading of device 'bad'
    """

    def __init__(
        self, settings: Settings, signer: Signer, *, device: str | None = None, at_reading: int | None = None
    ) -> None:
        super().__init__(settings, signer)
        self.fault_device = device
        self.fault_at = at_reading
        self._learned = 0

    def _learn(self, part: list[tuple[Reading, int]]) -> list[Message]:
        readings = [r for r, _ in part]
        if self.fault_device is not None and any(r.device_id == self.fault_device for r in readings):
            raise InjectedFault(f"injected: a reading of device {self.fault_device!r}")
        if self.fault_at is not None and self._learned < self.fault_at <= self._learned + len(readings):
            self._learned = self.fault_at  # once: the readings after it learn normally
            raise InjectedFault(f"injected: at reading {self.fault_at}")
        out = super()._learn(part)
        self._learned += len(readings)
        return out


def core_from_env(
    settings: Settings, signer: Signer, worker_id: str, env: Mapping[str, str]
) -> WorkerCore | None:
    """A :class:`FaultyCore` if ``env`` asks for one (see the module docs), else ``None``.

    Examples
    --------
    >>> core_from_env(Settings(), Signer.generate(), "w", {}) is None
    True
    >>> core = core_from_env(Settings(), Signer.generate(), "w", {ENV: "reading=500"})
    >>> type(core).__name__, core.fault_at, core.worker_id
    ('FaultyCore', 500, 'w')
    >>> core_from_env(Settings(), Signer.generate(), "w", {ENV: "sometimes"})
    Traceback (most recent call last):
    ...
    ValueError: METASTREAM_INJECT_FAULT must be device=<id> or reading=<n>, not 'sometimes'
    """
    spec = env.get(ENV, "")
    if not spec:
        return None
    kind, _, value = spec.partition("=")
    if kind == "device" and value:
        core = FaultyCore(settings, signer, device=value)
    elif kind == "reading" and value.isdigit() and int(value) > 0:
        core = FaultyCore(settings, signer, at_reading=int(value))
    else:
        raise ValueError(f"{ENV} must be device=<id> or reading=<n>, not {spec!r}")
    core.worker_id = worker_id
    log.warning("%s=%s: this worker's learner fails on purpose (tests only)", ENV, spec)
    return core
