"""Metrics from the built-in router's own statistics: what users of each version really experienced.

No data is None, never 0: a router that cannot be reached, or a version that served no request in the window,
must not look like a perfectly healthy version with a 0 % error rate. Only ``rps`` is 0.0 without requests,
because "no requests" is a true rate.

Latency is the exception to "no request, no data": requests that have waited for an answer longer than the window
count with the time waited (see releasegate/router/stats.py), so a version too slow to finish any request in the
window is seen while it is slow. When no request completed, those ages are all there is: the value is returned as
``AtLeast`` (a lower bound), which the engine uses only to find a breach, never to pass a step.
"""

from __future__ import annotations

from typing import Any

from releasegate.errors import ProviderError
from releasegate.providers.base import AtLeast, MetricQuery
from releasegate.providers.routers.builtin import BuiltinRouterClient

SUPPORTED = ("error_rate", "rps", "latency_p50", "latency_p95", "latency_p99")


class RouterMetrics:
    """``MetricSource`` over one router's ``GET /stats``; latencies are in seconds."""

    def __init__(self, client: BuiltinRouterClient) -> None:
        self.client = client

    async def query(self, q: MetricQuery) -> float | None:
        if q.metric not in SUPPORTED or q.window <= 0:
            return None
        try:
            data = await self.client.stats(q.window, q.version)
        except ProviderError:
            return None
        entry: Any = data.get(q.version)
        if not isinstance(entry, dict):
            return 0.0 if q.metric == "rps" else None
        value = entry.get(q.metric)
        if q.metric == "rps" and value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if q.metric != "rps" and not entry.get("requests"):
            return AtLeast(value) if q.metric.startswith("latency_") and entry.get("waiting") else None
        return float(value)
