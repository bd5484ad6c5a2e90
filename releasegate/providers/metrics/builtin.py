"""Metrics from the built-in router's own statistics: what users of each version really experienced.

No data is None, never 0: a router that cannot be reached, or a version that served no request in the window,
must not look like a perfectly healthy version with a 0 % error rate. Only ``rps`` is 0.0 without requests,
because "no requests" is a true rate. ``explain`` says which of those it was.

Latency is the exception to "no request, no data": requests that have waited for an answer longer than the window
count with the time waited (see releasegate/router/stats.py), so a version too slow to finish any request in the
window is seen while it is slow. When no request completed, those ages are all there is: the value is returned as
``AtLeast`` (a lower bound), which the engine uses only to find a breach, never to pass a step.
"""

from __future__ import annotations

from typing import Any

from releasegate.durations import format_duration
from releasegate.errors import ProviderError
from releasegate.providers.base import AtLeast, MetricQuery
from releasegate.providers.metrics.reasons import ExplainedSource, cannot_measure, no_traffic
from releasegate.providers.metrics.totals import Snapshot
from releasegate.providers.routers.builtin import BuiltinRouterClient
from releasegate.router.stats import VersionTotals
from releasegate.spec.capabilities import ROUTERS

SUPPORTED = ROUTERS["builtin"]  # the capability table validate checks rules against


class RouterMetrics(ExplainedSource):
    """``MetricSource`` over one router's ``GET /stats``; latencies are in seconds."""

    def __init__(self, client: BuiltinRouterClient) -> None:
        super().__init__()
        self.client = client

    async def _query(self, q: MetricQuery) -> tuple[float | None, str | None]:
        if q.metric not in SUPPORTED:
            return None, cannot_measure("builtin", q.metric)
        if q.window <= 0:
            return None, f"an empty window ({q.window:g}s)"
        try:
            data = await self.client.stats(q.window, q.version)
        except ProviderError as exc:
            return None, str(exc)
        entry: Any = data.get(q.version)
        if not isinstance(entry, dict):
            return (0.0, None) if q.metric == "rps" else (None, no_traffic(q.version, q.window))
        value = entry.get(q.metric)
        if q.metric == "rps" and value is None:
            return 0.0, None
        if q.metric != "rps" and not entry.get("requests"):
            if q.metric.startswith("latency_") and entry.get("waiting") and isinstance(value, int | float) \
                    and not isinstance(value, bool):
                # Counts only if it breaches; otherwise the engine takes it as no data and shows this reason.
                return AtLeast(value), (f"no request to {q.version} completed in the last "
                                        f"{format_duration(q.window)}; the slowest has waited "
                                        f"{format_duration(round(float(value), 3))} so far")
            return None, no_traffic(q.version, q.window)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"the built-in router at {self.client.admin} sent no number for {q.metric}"
        return float(value), None

    async def totals(self) -> Snapshot:
        """Each version's requests, 5xx errors and latency histogram since its first request through this router
        process (releasegate/providers/metrics/totals.py): the judge differences two of these."""
        data = await self.client.totals()
        versions: dict[str, VersionTotals] = {}
        for version, entry in data["versions"].items():
            if isinstance(entry, dict):
                raw = entry.get("hist")
                hist: dict[Any, Any] = raw if isinstance(raw, dict) else {}
                versions[str(version)] = {"requests": int(entry.get("requests") or 0),
                                          "errors": int(entry.get("errors") or 0),
                                          "hist": {str(b): int(n) for b, n in hist.items()}}
        return Snapshot(f"builtin:{data.get('started_at')}", versions)

    async def counts(self, window: float, recent: float | None = None) -> dict[str, dict[str, float | None]]:
        """Requests and 5xx errors per version over the last ``window`` seconds (the router keeps an hour), as
        the router proxied them: what a report says reached each version (docs/reports.md); with ``recent``, also
        each version's p95 latency over the last ``recent`` seconds (``p95``, seconds; None without requests), so
        the dashboard charts the previous version's latency beside the new one's."""
        data = await self.client.stats(window)
        out: dict[str, dict[str, float | None]] = {}
        for version, entry in data.items():
            if isinstance(entry, dict):
                out[str(version)] = {"requests": int(entry.get("requests") or 0),
                                     "errors": int(entry.get("errors") or 0)}
        if recent is not None:
            latest = await self.client.stats(recent)
            for version, counted in out.items():
                entry = latest.get(version)
                p95 = entry.get("latency_p95") if isinstance(entry, dict) else None
                counted["p95"] = float(p95) if isinstance(p95, int | float) else None
        return out
