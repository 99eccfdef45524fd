"""Clocks: the system clock, and a virtual clock that only moves when told to."""

from __future__ import annotations

import time

__all__ = ["SystemClock", "VirtualClock"]


class SystemClock:
    """Wall-clock time."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()


class VirtualClock:
    """A clock for the embedded runtime and tests: time moves only by :meth:`advance`.

    Args:
        start: The initial time in seconds since the epoch (default: the wall clock now).
    """

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)

    def now(self) -> float:
        """The virtual time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward; a negative amount is refused (time never goes back)."""
        if seconds < 0:
            raise ValueError(f"time cannot go back (advance by {seconds} s)")
        self._now += seconds
