"""A progress bar for long runs (tqdm), shown only on a terminal."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class Progress:
    """A tqdm bar on stderr that takes the running total of items done.

    Callers (replay, evaluate, the producer) report how many items are done
    so far, while tqdm counts increments; this wrapper turns one into the other.
    Silent unless ``stream`` is a terminal (or ``enabled=True``), so piped
    output and CI logs stay clean.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress(10, "replay", stream=out, enabled=True, interval=0.0)
    >>> p.update(5); p.close()
    >>> "replay" in out.getvalue() and "50%" in out.getvalue()
    True
    >>> quiet = io.StringIO()  # not a terminal: nothing is drawn
    >>> q = Progress(10, "replay", stream=quiet)
    >>> q.update(5); q.close()
    >>> quiet.getvalue()
    ''
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.2,
    ) -> None:
        out = stream if stream is not None else sys.stderr
        # tqdm's ``disable=None`` means "draw only on a terminal".
        self._bar = tqdm(
            total=max(total, 1),
            desc=label,
            file=out,
            disable=None if enabled is None else not enabled,
            mininterval=interval,
            unit_scale=True,
            dynamic_ncols=True,
        )

    def update(self, done: int) -> None:
        """Report ``done`` items finished so far."""
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Draw the last state and end the line the bar was drawn on."""
        self._bar.close()
