"""An unexpected failure of any agent or task stops the whole worker process, with a non-zero exit.

Faust restarts a crashed agent, or leaves it dead, while the rest of the
process (web server, timers, consumer) runs on: a zombie serving frozen
metrics.  A worker is better dead: its orchestrator (systemd, Kubernetes)
restarts it, and the new process resumes from the last checkpoint.  So every
agent and task body of :mod:`pipeline.app` runs inside :meth:`FatalStop.guard`:
the first exception that escapes one is logged as one line, the worker is
asked to stop as on SIGTERM (without a final checkpoint: its state may be
half updated), and if that has not ended the process within ``grace_s`` it
is ended hard.  Either way the exit status is :data:`EXIT_FATAL`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import traceback
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

EXIT_FATAL = 70
"""Exit status after a fatal failure (``EX_SOFTWARE`` of sysexits.h)."""


def stop_this_process() -> None:
    """Ask the running worker to stop, exactly as an orchestrator's SIGTERM does."""
    os.kill(os.getpid(), signal.SIGTERM)


class FatalStop:
    """The first unexpected failure of any agent or task ends the process.

    Parameters
    ----------
    stop
        Starts a graceful stop of the worker (default: SIGTERM to this process).
    hard_exit
        Ends the process at once with a status (default :func:`os._exit`),
        called if the graceful stop has not ended it within ``grace_s``.
    grace_s
        How long the graceful stop may take.

    Examples
    --------
    >>> calls = []
    >>> fatal = FatalStop(stop=lambda: calls.append("stop"), hard_exit=calls.append, grace_s=0.01)
    >>> fatal.fail("checkpoint timer", KeyError("dev-7"))
    >>> fatal.fail("readings agent", RuntimeError("later"))  # only the first failure counts
    >>> fatal.failed, fatal.exit_code
    ('checkpoint timer', 70)
    >>> import time; time.sleep(0.2); calls
    ['stop', 70]
    """

    def __init__(
        self,
        stop: Callable[[], None] = stop_this_process,
        hard_exit: Callable[[int], None] = os._exit,
        grace_s: float = 15.0,
    ) -> None:
        self.stop = stop
        self.hard_exit = hard_exit
        self.grace_s = grace_s
        self.failed: str | None = None
        """Which agent or task failed first (``None``: none)."""
        self._timer: threading.Timer | None = None

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_FATAL` after a failure, else 0."""
        return EXIT_FATAL if self.failed is not None else 0

    def fail(self, where: str, exc: BaseException) -> None:
        """``where`` failed with ``exc``: log it, then stop the process (only the first time)."""
        if self.failed is not None:
            return
        self.failed = where
        frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        at = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
        log.critical(
            "fatal: %s failed with %r%s; stopping the worker with exit status %d so that it is restarted",
            where,
            exc,
            at,
            EXIT_FATAL,
        )
        log.debug("traceback of the fatal failure", exc_info=exc)
        self._timer = threading.Timer(self.grace_s, self.hard_exit, (EXIT_FATAL,))
        self._timer.daemon = True
        self._timer.start()
        self.stop()

    def cancel(self) -> None:
        """The process is ending by itself: no hard exit needed (for in-process runs)."""
        if self._timer is not None:
            self._timer.cancel()

    async def guard(self, where: str, body: Awaitable[None]) -> None:
        """Run an agent or task body; an exception escaping it is fatal.

        After a failure this waits until the stop cancels it, so Faust never
        restarts the body in the failed process.

        Examples
        --------
        >>> async def broken() -> None:
        ...     raise ValueError("no")
        >>> async def main() -> str | None:
        ...     fatal = FatalStop(stop=lambda: None, hard_exit=lambda code: None, grace_s=60)
        ...     task = asyncio.ensure_future(fatal.guard("meta follower", broken()))
        ...     await asyncio.sleep(0.01)
        ...     task.cancel()
        ...     fatal.cancel()
        ...     return fatal.failed
        >>> asyncio.run(main())
        'meta follower'
        """
        try:
            await body
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(where, exc)
            await asyncio.Event().wait()
