"""A dependency-free progress bar for long runs, shown only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws ``label [####    ] 40% 1,234/s`` at most every ``interval`` seconds.

    Silent unless ``stream`` is a terminal (or ``enabled=True``), so piped
    output and CI logs stay clean.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> ticks = iter([0.0, 1.0, 2.0]).__next__
    >>> p = Progress(10, "replay", stream=out, enabled=True, interval=0.0, clock=ticks)
    >>> p.update(5); p.close()
    >>> "replay" in out.getvalue() and "50%" in out.getvalue()
    True
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.2,
        clock: object = time.monotonic,
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self._clock = clock
        self._start = self._now()
        self._last = -1e9

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def update(self, done: int) -> None:
        """Report ``done`` items finished so far."""
        if not self.enabled:
            return
        now = self._now()
        if now - self._last < self.interval and done < self.total:
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        rate = done / max(now - self._start, 1e-9)
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {rate:,.0f}/s")
        self.stream.flush()

    def close(self) -> None:
        """End the line the bar was drawn on."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
