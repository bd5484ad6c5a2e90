"""Metrics from HAProxy's own counters: ``error_rate`` and ``rps`` per version from ``show stat``.

HAProxy keeps running totals per server, not windows. A version's requests are its servers' ``req_tot`` plus the
requests they could not take (``econ``: the connection failed and the client got a 503; ``wredis``: HAProxy sent
it to another server instead), and its errors are ``hrsp_5xx`` + ``eresp`` + those: a version whose backends
refuse connections has an error rate of 1, as through the built-in router (502), not "no traffic".

Every query reads the totals and keeps the reading in a short history per version, so a query for the last
``window`` seconds takes the change since the latest reading at or before ``now - window`` (or since the oldest
reading, when the history is shorter than the window). Two queries of one analysis (the interval, then the whole
step right after it) therefore both answer for their own window, not for the milliseconds between them.

None (no data, never 0) only when there is no evidence: no earlier reading yet (the router takes one of every
routed version right after each route change, ``baseline``; without it the first query is one), HAProxy does not
answer, or ``error_rate`` without a request in the window. ``rps`` is then 0.0,
because "no requests" is a true rate (as for the built-in router). Totals are compared per server slot: a slot
that went down was reset by a reload and counts from 0; a slot that joined the version since the earlier reading
is left out (its earlier count may belong to another version).

What HAProxy cannot give: percentiles. ``show stat`` has ``rtime``/``ttime``, averages over the last 1,024
requests, which say nothing about p95; latency rules need the built-in or nginx router, or ``metric: prometheus``
(docs/integrations.md).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from releasegate.errors import ProviderError
from releasegate.providers.base import MetricQuery
from releasegate.providers.metrics.reasons import ExplainedSource, cannot_measure, no_traffic
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.spec.capabilities import ROUTERS

SUPPORTED = ROUTERS["haproxy"]  # the capability table validate checks rules against
KEEP = 3600.0 + 60.0
"""Readings are kept this long (plus the latest one before it): windows up to an hour, like the other sources."""
MIN_SPAN = 1.0
"""A baseline closer than this to now is too short a window to say anything (a second query right after one)."""

_Reading = dict[str, tuple[int, int]]  # server slot -> (requests, 5xx answers)


class HaproxyStatsMetrics(ExplainedSource):
    """``MetricSource`` over the servers the router assigned to each version (its state file's slots)."""

    def __init__(self, router: HaproxyRouter, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.router = router
        self.clock = clock
        self._history: dict[str, deque[tuple[float, _Reading]]] = {}

    def explain(self, q: MetricQuery) -> str | None:
        return self.reasons.get(q)

    async def reading(self, version: str) -> _Reading | None:
        """(requests, 5xx answers) per server slot of ``version``; None when the router does not route it.
        Raises ProviderError when HAProxy cannot answer."""
        names = self.router.slots_of(version)
        if names is None:
            return None
        stats = await self.router.stats()
        out = {}
        for name in names:
            row = stats.get(name, {})

            def n(field: str, row: dict[str, str] = row) -> int:
                return int(row.get(field) or 0)

            undelivered = n("econ") + n("wredis")  # could not connect: failed (503), or sent to another server
            out[name] = (n("req_tot") + undelivered, n("hrsp_5xx") + n("eresp") + undelivered)
        return out

    async def baseline(self, versions: list[str]) -> None:
        """Read the versions' totals now (right after a route change), so the first analysis window of a step
        already has a baseline; a version never read before would otherwise give no data for one interval."""
        for version in versions:
            try:
                now = await self.reading(version)
            except ProviderError:
                return  # the next query says why
            if now is not None:
                at = self.clock()
                history = self._history.setdefault(version, deque())
                history.append((at, now))
                _prune(history, at)

    async def query(self, q: MetricQuery) -> float | None:
        value, why = await self._query(q)
        self.reasons.set(q, why if value is None else None)
        return value

    async def _query(self, q: MetricQuery) -> tuple[float | None, str | None]:
        if q.metric not in SUPPORTED:
            return None, cannot_measure("haproxy", q.metric)
        try:
            now = await self.reading(q.version)
        except ProviderError as exc:
            return None, str(exc)
        if now is None:
            return (0.0, None) if q.metric == "rps" else (None, no_traffic(q.version, q.window))
        at = self.clock()
        history = self._history.setdefault(q.version, deque())
        base = _baseline(history, at, q.window)
        history.append((at, now))
        _prune(history, at)
        if base is None:
            return None, (f"HAProxy keeps running totals: this is the first reading of {q.version}'s counters "
                          "(a baseline); values follow from the next evaluation")
        then_at, then = base
        requests = errors = 0
        for slot, (req, err) in now.items():
            if slot not in then:
                continue
            req0, err0 = then[slot]
            reset = req < req0 or err < err0  # a reload started the counters again
            requests += req if reset else req - req0
            errors += err if reset else err - err0
        if q.metric == "rps":
            return requests / (at - then_at), None
        return (min(1.0, errors / requests), None) if requests else (None, no_traffic(q.version, q.window))


def _baseline(history: deque[tuple[float, _Reading]], at: float,
              window: float) -> tuple[float, _Reading] | None:
    """The latest reading at or before ``at - window``, else the oldest one (a history shorter than the window),
    but never one less than ``MIN_SPAN`` (or the window, if shorter) before ``at``."""
    found = None
    for t, reading in history:
        if t <= at - window:
            found = (t, reading)
        else:
            break
    if found is None and history:
        found = history[0]
    if found is None or at - found[0] < min(MIN_SPAN, window) or at - found[0] <= 0:
        return None
    return found


def _prune(history: deque[tuple[float, _Reading]], at: float) -> None:
    while len(history) > 2 and history[1][0] <= at - KEEP:
        history.popleft()
