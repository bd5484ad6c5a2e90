"""Per-version ``cpu`` and ``memory_mb`` of local instances, read from the processes themselves with psutil.

cpu is a rate, so it needs two readings. Every query keeps each process's cumulative cpu time, and the next
query computes the rate over the requested window from that history, without waiting. Only a process seen for
the first time has no history: for it the query takes a second reading after a short ``asyncio.sleep``, so the
event loop is never blocked (psutil's own ``cpu_percent(interval=...)`` would block it).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import psutil

from releasegate.providers.base import Instance, MetricQuery
from releasegate.spec.models import PROCESS_METRICS

InstancesOf = Callable[[str, str], Awaitable[list[Instance]]]
"""``(service, version) -> live instances``, for callers that are not a platform."""

_Key = tuple[int, float]  # (pid, create_time): a pid alone may be reused by another process


class InstanceLister(Protocol):
    async def instances(self, service: str) -> list[Instance]: ...


class ProcessMetrics:
    """``MetricSource`` for cpu (percent of one core) and memory_mb (RSS), summed over a version's instances.

    Each instance counts with all its descendants, because the recorded pid is often ``sh -c`` and the real
    work happens in its child (or in the app's own workers). RSS is summed as is, so memory shared between
    forked workers counts once per worker: an upper bound, which is the safe side for a "max" rule. Other
    metrics have no data here (None).
    """

    def __init__(self, source: InstanceLister | InstancesOf, *, first_sample: float = 0.25,
                 keep: float = 3600.0) -> None:
        self._source = source
        self.first_sample = first_sample
        self.keep = keep
        self._history: dict[_Key, deque[tuple[float, float]]] = {}

    async def query(self, q: MetricQuery) -> float | None:
        if q.metric not in PROCESS_METRICS:
            return None
        procs = _processes(await self._instances(q.service, q.version))
        if not procs:
            return None
        if q.metric == "memory_mb":
            return _memory_mb(procs)
        return await self._cpu(procs, q.window)

    async def _instances(self, service: str, version: str) -> list[Instance]:
        if callable(self._source):
            return await self._source(service, version)
        return [i for i in await self._source.instances(service) if i.version == version]

    async def _cpu(self, procs: dict[_Key, psutil.Process], window: float) -> float | None:
        if any(key not in self._history for key in procs):
            self._sample(procs)
            await asyncio.sleep(self.first_sample)
        self._sample(procs)
        total, seen = 0.0, False
        for key in procs:
            rate = self._rate(key, window)
            if rate is not None:
                total, seen = total + rate, True
        self._prune(procs)
        return total * 100.0 if seen else None

    def _sample(self, procs: dict[_Key, psutil.Process]) -> None:
        now = time.monotonic()
        for key, proc in procs.items():
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            # children_user/system are left out: live children are counted as processes of their own.
            self._history.setdefault(key, deque()).append((now, times.user + times.system))

    def _rate(self, key: _Key, window: float) -> float | None:
        """cpu seconds per second since the oldest reading inside the window (or the latest before it)."""
        samples = self._history.get(key)
        if not samples or len(samples) < 2:
            return None
        now_t, now_cpu = samples[-1]
        earlier = list(samples)[:-1]
        inside = [s for s in earlier if s[0] >= now_t - window]
        base_t, base_cpu = inside[0] if inside else earlier[-1]
        elapsed = now_t - base_t
        return max(0.0, now_cpu - base_cpu) / elapsed if elapsed > 0 else None

    def _prune(self, current: dict[_Key, psutil.Process]) -> None:
        horizon = time.monotonic() - self.keep
        for key in list(self._history):
            samples = self._history[key]
            if key not in current:
                del self._history[key]
                continue
            while len(samples) > 2 and samples[0][0] < horizon:
                samples.popleft()


def _processes(instances: list[Instance]) -> dict[_Key, psutil.Process]:
    out: dict[_Key, psutil.Process] = {}
    for inst in instances:
        if inst.pid is None:
            continue
        try:
            root = psutil.Process(inst.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in tree:
            try:
                out.setdefault((proc.pid, proc.create_time()), proc)
            except psutil.Error:
                continue
    return out


def _memory_mb(procs: dict[_Key, psutil.Process]) -> float | None:
    total, seen = 0, False
    for proc in procs.values():
        try:
            total += proc.memory_info().rss
            seen = True
        except psutil.Error:
            continue
    return total / (1024 * 1024) if seen else None
