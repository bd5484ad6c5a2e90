"""Per-version ``cpu``, ``memory_mb`` and ``memory_percent`` of containers, read from the engine's stats
(``GET /containers/ID/stats?stream=false``, Docker Engine and Podman alike).

The same figures as the local platform's (``releasegate.providers.metrics.process``), so a rule reads the same on
either: per instance, averaged over the version's instances; ``cpu`` in percent of one core (a container using two
cores is at 200), from the container's cumulative CPU time (``cpu_stats.cpu_usage.total_usage``, nanoseconds) over
the window, kept between queries; a container seen for the first time gets a second reading after a short
``asyncio.sleep``. ``memory_mb`` is the cgroup's usage minus its inactive file cache (as ``docker stats`` shows
it), ``memory_percent`` that in percent of the container's limit (its ``memory:``, else the host's memory).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Protocol

import psutil

from releasegate.errors import ProviderError
from releasegate.providers.base import Instance, MetricQuery
from releasegate.providers.metrics.reasons import ExplainedSource
from releasegate.spec.models import PROCESS_METRICS

MB = 1024 * 1024


class ContainerStats(Protocol):
    async def instances(self, service: str) -> list[Instance]: ...

    async def stats(self, instance: Instance) -> dict[str, Any] | None: ...


class ContainerMetrics(ExplainedSource):
    """``MetricSource`` for the container platform (``ContainerPlatform.stats`` reads one container's stats)."""

    def __init__(self, platform: ContainerStats, *, first_sample: float = 0.25, keep: float = 3600.0) -> None:
        super().__init__()
        self.platform = platform
        self.first_sample = first_sample
        self.keep = keep
        self._history: dict[str, deque[tuple[float, float]]] = {}  # container -> (monotonic, cpu seconds)

    async def _query(self, q: MetricQuery) -> tuple[float | None, str | None]:
        if q.metric not in PROCESS_METRICS:
            return None, None
        try:
            live = [i for i in await self.platform.instances(q.service) if i.version == q.version]
            if not live:
                return None, f"no running container of {q.version}"
            first = any(self._key(i) not in self._history for i in live)
            stats = await self._read(live)
            if q.metric == "cpu":
                if first:  # a rate needs two readings
                    await asyncio.sleep(self.first_sample)
                    stats = await self._read(live)
                value = _mean([rate * 100.0 for i in live if (rate := self._rate(self._key(i), q.window))
                               is not None])
            else:
                used = [(_used(s), _limit(s)) for s in stats.values()]
                figures = [u / MB if q.metric == "memory_mb" else u * 100.0 / limit
                           for u, limit in used if u is not None and limit]
                value = _mean(figures)
        except ProviderError as exc:
            return None, str(exc)
        return value, None if value is not None else f"the engine gave no {q.metric} for {q.version}'s containers"

    async def _read(self, live: list[Instance]) -> dict[str, dict[str, Any]]:
        found = await asyncio.gather(*(self.platform.stats(i) for i in live))
        now = time.monotonic()
        out = {}
        for inst, stats in zip(live, found, strict=True):
            if stats is None:
                continue
            out[self._key(inst)] = stats
            total = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
            if isinstance(total, int | float):
                samples = self._history.setdefault(self._key(inst), deque())
                samples.append((now, total / 1e9))
                while len(samples) > 2 and samples[0][0] < now - self.keep:
                    samples.popleft()
        return out

    def _rate(self, key: str, window: float) -> float | None:
        """cpu seconds per second since the oldest reading inside the window (or the latest before it)."""
        samples = list(self._history.get(key) or ())
        if len(samples) < 2:
            return None
        now_t, now_cpu = samples[-1]
        earlier = samples[:-1]
        inside = [s for s in earlier if s[0] >= now_t - window]
        base_t, base_cpu = inside[0] if inside else earlier[-1]
        elapsed = now_t - base_t
        return max(0.0, now_cpu - base_cpu) / elapsed if elapsed > 0 else None

    @staticmethod
    def _key(inst: Instance) -> str:
        return inst.ref or f"{inst.version}-{inst.id}"


def _used(stats: dict[str, Any]) -> float | None:
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage")
    if not isinstance(usage, int | float):
        return None
    detail = memory.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))  # cgroup v2, v1
    return float(usage - cache) if isinstance(cache, int | float) and cache <= usage else float(usage)


def _limit(stats: dict[str, Any]) -> float | None:
    """The container's memory limit; no limit (reported as the host's memory or as "unlimited"): the host's."""
    limit = (stats.get("memory_stats") or {}).get("limit")
    host = float(psutil.virtual_memory().total)
    return min(float(limit), host) if isinstance(limit, int | float) and limit > 0 else host


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
