"""A small drift detector for the device: Page-Hinkley on the scaled error stream, rises only.

The worker watches each device with River; River is not installed on devices,
and one Page-Hinkley test per device is a few float operations per reading.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class PageHinkley:
    """Page-Hinkley test for a rise in the mean of a stream (River's ``mode="up"`` recursion).

    Parameters
    ----------
    min_instances
        Values seen (since the last reset) before an alarm may be raised.
    delta
        Tolerated rise of the mean.
    threshold
        Alarm when the cumulative rise above the running mean exceeds this.
    alpha
        Forgetting factor of the cumulative sum.

    Examples
    --------
    >>> ph = PageHinkley(min_instances=5, threshold=5.0)
    >>> [ph.update(1.0) for _ in range(20)].count(True)
    0
    >>> alarms = [ph.update(3.0) for _ in range(20)]
    >>> alarms.index(True)   # readings after the rise until the alarm
    2
    """

    min_instances: int = 30
    delta: float = 0.005
    threshold: float = 20.0
    alpha: float = 1 - 0.0001
    n: int = 0
    mean: float = 0.0
    cum: float = 0.0
    cum_min: float = 0.0

    def update(self, x: float) -> bool:
        """Take one value; ``True`` when it raises an alarm (the test then starts afresh)."""
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.cum = self.alpha * self.cum + (x - self.mean - self.delta)
        self.cum_min = min(self.cum_min, self.cum)
        if self.n >= self.min_instances and self.cum - self.cum_min > self.threshold:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        """Forget the stream (parameters stay)."""
        self.n, self.mean, self.cum, self.cum_min = 0, 0.0, 0.0, 0.0


@dataclass
class ErrorDriftDetector:
    """Drift on a device's error stream: errors scaled by their early mean, Page-Hinkley, a cooldown.

    Scaling by the mean of the first ``warmup`` errors makes one threshold fit
    devices whose errors differ by orders of magnitude.  After an alarm, new
    alarms are ignored for ``cooldown`` readings, so one drift triggers one
    adaptation.

    Examples
    --------
    >>> det = ErrorDriftDetector(warmup=10, cooldown=0)
    >>> sum(det.update(0.5) for _ in range(200)), det.scale
    (0, 0.5)
    >>> drifted = [det.update(2.0) for _ in range(50)]
    >>> drifted.index(True), det.alarms
    (6, 1)
    """

    warmup: int = 50
    cooldown: int = 100
    test: PageHinkley | None = None
    scale: float | None = None
    seen: int = 0
    warm_sum: float = 0.0
    quiet: int = 0
    alarms: int = 0

    def __post_init__(self) -> None:
        if self.test is None:
            self.test = PageHinkley()

    def update(self, error: float) -> bool:
        """Take one reading's error (absolute error, or 0/1 misclassification); ``True`` on drift."""
        assert self.test is not None
        self.seen += 1
        if self.scale is None:
            self.warm_sum += error
            if self.seen >= self.warmup:
                self.scale = max(self.warm_sum / self.seen, 1e-6)
            return False
        alarm = self.test.update(error / self.scale)
        if self.quiet > 0:
            self.quiet -= 1
            return False
        if alarm:
            self.alarms += 1
            self.quiet = self.cooldown
        return alarm

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able state (see :meth:`from_dict`)."""
        out = asdict(self)
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ErrorDriftDetector:
        """Inverse of :meth:`to_dict`."""
        fields = dict(state)
        test = PageHinkley(**fields.pop("test"))
        return cls(test=test, **fields)
