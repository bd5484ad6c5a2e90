"""Metrics from HAProxy's own counters: ``error_rate`` and ``rps`` per version from ``show stat``.

HAProxy keeps totals (``req_tot``, ``hrsp_5xx``) per server, not windows, so a value is the change between two
queries of the same version and metric: the first query only records a baseline and answers None (no data, never
0). ``error_rate`` without requests in between is None too; ``rps`` is then 0.0, because "no requests" is a true
rate (as for the built-in router). A reload resets the counters: a total that went down starts a new baseline.
The query's ``window`` is not used: the analysis interval between queries is the window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from releasegate.errors import ProviderError
from releasegate.providers.base import MetricQuery
from releasegate.providers.routers.haproxy import HaproxyRouter

SUPPORTED = ("error_rate", "rps")


class HaproxyStatsMetrics:
    """``MetricSource`` over the servers the router assigned to each version (its state file's slots)."""

    def __init__(self, router: HaproxyRouter, clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self.clock = clock
        self._last: dict[tuple[str, str], tuple[float, int, int]] = {}

    async def totals(self, version: str) -> tuple[int, int] | None:
        """(requests, 5xx answers) summed over the version's servers, or None when HAProxy cannot answer."""
        names = self.router.slots_of(version)
        if names is None:
            return None
        try:
            stats = await self.router.stats()
        except ProviderError:
            return None
        requests = errors = 0
        for name in names:
            row = stats.get(name, {})
            requests += int(row.get("req_tot") or row.get("stot") or 0)
            errors += int(row.get("hrsp_5xx") or 0)
        return requests, errors

    async def query(self, q: MetricQuery) -> float | None:
        if q.metric not in SUPPORTED:
            return None
        now = await self.totals(q.version)
        if now is None:
            return None
        key = (q.version, q.metric)
        at = self.clock()
        prev = self._last.get(key)
        self._last[key] = (at, *now)
        if prev is None or now[0] < prev[1] or now[1] < prev[2] or at <= prev[0]:
            return None
        requests, errors = now[0] - prev[1], now[1] - prev[2]
        if q.metric == "rps":
            return requests / (at - prev[0])
        return errors / requests if requests else None
