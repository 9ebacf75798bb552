"""One context-manager shape for every client and broker: ``with`` closes on exit."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ClosesOnExit:
    """``with obj:`` yields ``obj`` and calls ``obj.close()`` on the way out.

    Subclasses define ``close()``; a broker overrides ``__enter__`` to start first.

    Examples
    --------
    >>> class Door(ClosesOnExit):
    ...     shut = False
    ...     def close(self) -> None:
    ...         self.shut = True
    >>> with Door() as d:
    ...     pass
    >>> d.shut
    True
    """

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
