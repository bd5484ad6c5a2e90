"""Per-version ``cpu``, ``memory_mb`` and ``memory_percent`` of local instances, read from the processes with psutil.

Every figure is per instance, then averaged over the version's instances, because that is how runbooks write
them ("CPU > 90 %", "memory > 300MB" are about one server, whatever the instance count): a sum made two healthy
instances at 50 % look like one at 100 %. Average rather than the busiest instance, for every metric alike: a rule
judges the version, and one instance's spike (a garbage collection, one heavy request) is not the version's
fault; an instance that runs out of memory and dies is caught anyway, as a dead instance rolls back at once.

An instance counts with all its descendants, because the recorded pid is often ``sh -c`` and the real work
happens in its child (or in the app's own workers). RSS is summed as is over those processes, so memory shared
between forked workers counts once per worker: an upper bound, which is the safe side for a "max" rule.

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
from releasegate.providers.metrics.cgroups import memory_limit
from releasegate.spec.models import PROCESS_METRICS

InstancesOf = Callable[[str, str], Awaitable[list[Instance]]]
"""``(service, version) -> live instances``, for callers that are not a platform."""

_Key = tuple[int, float]  # (pid, create_time): a pid alone may be reused by another process
_Tree = dict[_Key, psutil.Process]  # one instance: its recorded process and every descendant
MB = 1024 * 1024
"""memory_mb counts in units of 2**20 bytes, as top, ps and docker stats do when they print M or MB."""


class InstanceLister(Protocol):
    async def instances(self, service: str) -> list[Instance]: ...


class ProcessMetrics:
    """``MetricSource`` for a version's instances, each with its process tree, averaged over the instances:
    ``cpu`` in percent of one core (a process tree using two cores is at 200), ``memory_mb`` RSS in MB,
    ``memory_percent`` RSS in percent of the instance's memory limit (its cgroup's, else the host's memory).
    Other metrics have no data here (None), as has a version without a live instance."""

    def __init__(self, source: InstanceLister | InstancesOf, *, first_sample: float = 0.25,
                 keep: float = 3600.0, host_memory: int | None = None) -> None:
        self._source = source
        self.first_sample = first_sample
        self.keep = keep
        self.host_memory = host_memory or psutil.virtual_memory().total
        self._history: dict[_Key, deque[tuple[float, float]]] = {}

    async def query(self, q: MetricQuery) -> float | None:
        if q.metric not in PROCESS_METRICS:
            return None
        trees = _trees(await self._instances(q.service, q.version))
        if not trees:
            return None
        if q.metric == "memory_mb":
            return _mean([rss / MB for tree in trees if (rss := _rss(tree)) is not None])
        if q.metric == "memory_percent":
            return _mean([rss * 100.0 / self._limit(tree) for tree in trees if (rss := _rss(tree)) is not None])
        return await self._cpu(trees, q.window)

    async def _instances(self, service: str, version: str) -> list[Instance]:
        if callable(self._source):
            return await self._source(service, version)
        return [i for i in await self._source.instances(service) if i.version == version]

    def _limit(self, tree: _Tree) -> int:
        """The tightest memory limit over the instance's processes (an app started through ``systemd-run -p
        MemoryMax=...`` by a shell wrapper has its limit on the child), never more than the host's memory."""
        limits = [limit for proc in tree.values() if (limit := memory_limit(proc.pid)) is not None]
        return min([*limits, self.host_memory])

    async def _cpu(self, trees: list[_Tree], window: float) -> float | None:
        if any(key not in self._history for tree in trees for key in tree):
            self._sample(trees)
            await asyncio.sleep(self.first_sample)
        self._sample(trees)
        per_instance = []
        for tree in trees:
            rates = [rate for key in tree if (rate := self._rate(key, window)) is not None]
            if rates:
                per_instance.append(sum(rates) * 100.0)
        self._prune(trees)
        return _mean(per_instance)

    def _sample(self, trees: list[_Tree]) -> None:
        now = time.monotonic()
        for tree in trees:
            for key, proc in tree.items():
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

    def _prune(self, trees: list[_Tree]) -> None:
        current = {key for tree in trees for key in tree}
        horizon = time.monotonic() - self.keep
        for key in list(self._history):
            samples = self._history[key]
            if key not in current:
                del self._history[key]
                continue
            while len(samples) > 2 and samples[0][0] < horizon:
                samples.popleft()


def _trees(instances: list[Instance]) -> list[_Tree]:
    """One process tree per live instance; a process is counted in the first instance that has it."""
    seen: set[_Key] = set()
    out: list[_Tree] = []
    for inst in instances:
        if inst.pid is None:
            continue
        try:
            root = psutil.Process(inst.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        tree: _Tree = {}
        for proc in procs:
            try:
                key = (proc.pid, proc.create_time())
            except psutil.Error:
                continue
            if key not in seen:
                seen.add(key)
                tree[key] = proc
        if tree:
            out.append(tree)
    return out


def _processes(instances: list[Instance]) -> dict[_Key, psutil.Process]:
    """Every process of the instances, flat (the instances' trees merged)."""
    return {key: proc for tree in _trees(instances) for key, proc in tree.items()}


def _rss(tree: _Tree) -> int | None:
    total, seen = 0, False
    for proc in tree.values():
        try:
            total += proc.memory_info().rss
            seen = True
        except psutil.Error:
            continue
    return total if seen else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
