"""Command bells: how the controllers of one process (the server's) hear of an operator command without each
asking the store four times a second.

Why: a controller must apply promote/abort/rollback soon after it is posted, and the store is the only channel
between processes (``releasegate abort`` from another shell, another server on the same store). Alone, each
controller polls its commands every 0.25 s; with 1,000 rollouts in one server that was 4,000 synchronous SQLite
queries a second in the event loop, the first cause of its scheduling lag (bench/bench_server_scale.py). With
``Bells``:

- a command posted in this process (the API's routes, through ``service.send_command``) rings its rollout's bell:
  the controller's sleep is cut short at once and it reads its commands;
- one watcher per process asks the store every ``watch_every`` seconds which rollouts have commands pending (one
  query for all of them) and rings those: a command posted by another process is still picked up within about
  the old poll interval;
- each controller still asks the store itself every ``fallback`` seconds, in case the watcher fell behind.

A controller without bells (``deploy`` and ``resume`` on the command line) polls as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from releasegate.engine.clock import Clock

log = logging.getLogger("releasegate.wakeups")

PendingLookup = Callable[[], set[str]]
"""The ids of the rollouts that have a command pending in the store (one query for all of them)."""


@dataclass
class Ear:
    """One listening controller: whether its bell rang since it last read its commands, when it last asked the
    store itself, and its current sleep (which a ring cuts short)."""

    rollout_id: str
    fallback: float
    rang: bool = False
    asked_at: float = float("-inf")
    sleeper: asyncio.Task[None] | None = field(default=None, repr=False)

    def due(self, now: float) -> bool:
        """Whether to read the commands from the store now: the bell rang, or the fallback interval passed. Reading
        them silences the bell (cleared before the read: a ring during it is heard next time)."""
        if not self.rang and now - self.asked_at < self.fallback:
            return False
        self.rang, self.asked_at = False, now
        return True

    async def wait(self, clock: Clock, seconds: float, pending: Callable[[], bool]) -> bool:
        """True at once when a command waits: the bell rang, or the store says so (asked every ``fallback``
        seconds); else sleep up to ``seconds`` (at most until the next such look) and say whether the bell rang."""
        now = clock.now()
        if self.rang:
            return True
        if now - self.asked_at >= self.fallback:
            self.asked_at = now
            if pending():
                self.rang = True  # read by the controller's next look at its commands
                return True
        return await self.sleep(clock, min(seconds, self.asked_at + self.fallback - now))

    async def sleep(self, clock: Clock, seconds: float) -> bool:
        """Sleep ``seconds`` on ``clock`` (so a TimedClock still measures how late it woke); True when the bell cut
        it short (or had rung before it began)."""
        if self.rang:
            return True
        self.sleeper = asyncio.get_running_loop().create_task(clock.sleep(seconds))
        try:
            await self.sleeper
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # this controller itself is cancelled (its sleep with it)
                raise
        finally:
            self.sleeper = None
        return self.rang


class Bells:
    """The bells of the rollouts one process drives (use them from that process's event loop; ``ring`` may be
    called from any thread)."""

    def __init__(self, pending: PendingLookup | None = None, watch_every: float = 0.25,
                 fallback: float = 5.0) -> None:
        self.pending = pending
        self.watch_every = watch_every
        self.fallback = fallback
        self._ears: dict[str, Ear] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def listening(self, rollout_id: str) -> Iterator[Ear]:
        """Register a controller for ``rollout_id`` while it runs (and start the watcher with the first)."""
        self._loop = asyncio.get_running_loop()
        if self._watcher is None and self.pending is not None:
            self._watcher = self._loop.create_task(self._watch())
        ear = self._ears[rollout_id] = Ear(rollout_id, self.fallback)
        try:
            yield ear
        finally:
            if self._ears.get(rollout_id) is ear:
                del self._ears[rollout_id]

    def ring(self, rollout_id: str) -> None:
        """A command for ``rollout_id`` was posted: wake its controller if it runs in this process."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _running(loop):
            self._ring(rollout_id)
        else:
            loop.call_soon_threadsafe(self._ring, rollout_id)

    def _ring(self, rollout_id: str) -> None:
        ear = self._ears.get(rollout_id)
        if ear is None:
            return
        ear.rang = True
        if ear.sleeper is not None and not ear.sleeper.done():
            ear.sleeper.cancel()

    async def _watch(self) -> None:
        """Ring every listening rollout that has a command pending in the store (posted by any process)."""
        assert self.pending is not None
        while True:
            await asyncio.sleep(self.watch_every)
            if not self._ears:
                continue
            try:
                waiting = self.pending()
            except Exception as exc:  # the store busy or gone for a moment: the controllers' fallback still asks
                log.warning("looking for pending commands failed: %s: %s", type(exc).__name__, exc)
                continue
            for rollout_id in waiting:
                self._ring(rollout_id)

    async def close(self) -> None:
        """Stop the watcher (the server's shutdown)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


__all__ = ["Bells", "Ear", "PendingLookup"]
