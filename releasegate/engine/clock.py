"""Time as a dependency, so hours of canary steps run in milliseconds under test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class TimedClock(SystemClock):
    """The system clock telling ``late`` how late each sleep woke (now - due): the server's scheduling lag, since
    a controller sleeps until its next decision is due (``releasegate_scheduling_lag_seconds``)."""

    def __init__(self, late: Callable[[float], None]) -> None:
        self.late = late

    async def sleep(self, seconds: float) -> None:
        due = self.now() + max(0.0, seconds)
        await asyncio.sleep(max(0.0, seconds))
        self.late(max(0.0, self.now() - due))


class FakeClock:
    """Time moves only when someone sleeps; every sleep returns at once, having advanced the clock."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)
