"""A node clock that tests move forward by hand (no hypothesis needed)."""

from __future__ import annotations

import time

__all__ = ["FakeClock"]


class FakeClock:
    """A node clock (``Node(clock=...)``) that you move forward by hand.

    It reads real time plus an offset that only grows, so it is never behind the real
    clock that clients use when they submit or signal (a new object is due at once), yet
    ``advance(3600)`` makes an hour pass instantly: leases expire, sleepers become due.
    """

    def __init__(self) -> None:
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError("a clock only moves forward")
        self.offset_ns += int(seconds * 1e9)

    def advance_to(self, ns: int) -> None:
        """Move forward to ``ns`` (ns since the epoch); a time in the past is a no-op."""
        self.offset_ns += max(0, ns - self())
