"""Metrics through HAProxy: ``error_rate`` and ``rps`` per version from ``show stat``, latency from its ring log.

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

Latency percentiles (``latency_p50/p95/p99``): ``show stat`` has only ``rtime``/``ttime``, averages over the last
1,024 requests, which say nothing about p95. The configuration releasegate renders therefore logs every request
into a ring that ``RingReader`` (``haproxy_ring``) follows over the same socket and counts into the built-in
router's 1-second histograms: latency is HAProxy's ``%Ta``, from the first byte of the request to the last byte of
the answer, at 1 ms resolution. ``error_rate`` and ``rps`` stay on the counters: they also see the requests a
version's servers could not take (HAProxy logs a redispatched request under the server that finally answered
it), and they need no ring, so a configuration without one still gates on errors. Without the ring, a latency
query has no data and ``explain`` quotes the lines to add.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable

from releasegate.durations import format_duration
from releasegate.errors import ProviderError
from releasegate.providers.base import MetricQuery
from releasegate.providers.metrics.haproxy_ring import RingReader
from releasegate.providers.metrics.reasons import ExplainedSource, cannot_measure, no_traffic
from releasegate.providers.metrics.totals import Snapshot
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.providers.routers.haproxy_config import frontend_log_lines, missing_ring, ring_lines
from releasegate.spec.capabilities import ROUTERS

SUPPORTED = ROUTERS["haproxy"]  # the capability table validate checks rules against
KEEP = 3600.0 + 60.0
"""Readings are kept this long (plus the latest one before it): windows up to an hour, like the other sources."""
MIN_SPAN = 1.0
"""A baseline closer than this to now is too short a window to say anything (a second query right after one)."""

_Reading = dict[str, tuple[int, int]]  # server slot -> (requests, 5xx answers)


class HaproxyStatsMetrics(ExplainedSource):
    """``MetricSource`` over the servers the router assigned to each version (its state file's slots); with
    ``ring``, latency from the ring log (``start`` it; ``close`` stops its thread)."""

    def __init__(self, router: HaproxyRouter, clock: Callable[[], float] = time.monotonic, *,
                 ring: bool = False, wall: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.router = router
        self.clock = clock
        self.wall = wall
        self.started = wall()
        self._history: dict[str, deque[tuple[float, _Reading]]] = {}
        self.ring = RingReader(router.socket, router.ring, router.backend, router.slot_versions,
                               router.state_stamp, functools.partial(missing_ring, router.spec, router.service),
                               ring_lines(router.spec, router.service), clock=wall) if ring else None

    def start(self) -> None:
        if self.ring is not None:
            self.ring.start()

    async def close(self) -> None:
        if self.ring is not None:
            await asyncio.to_thread(self.ring.close)

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

    async def totals(self) -> Snapshot:
        """Each version's counts since the ring reader started (totals.py): the ring's lines carry the latency
        the counters lack. Without a ring (an operator's own configuration) there is no histogram: an error."""
        ring = self.ring
        if ring is None:
            raise ProviderError("this HAProxy metric source was built without its ring reader")
        versions = await asyncio.to_thread(ring.totals, self.wall())
        if not versions and ring.error is not None:
            raise ProviderError(ring.error)
        return Snapshot(f"haproxy-ring:{self.started}", versions)

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

    async def _query(self, q: MetricQuery) -> tuple[float | None, str | None]:
        if q.metric not in SUPPORTED:
            return None, cannot_measure("haproxy", q.metric)
        if q.metric.startswith("latency_"):
            return await self._latency(q)
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
        requests, errors = _delta(then, now)
        if q.metric == "rps":
            return requests / (at - then_at), None
        return (min(1.0, errors / requests), None) if requests else (None, no_traffic(q.version, q.window))

    async def counts(self, window: float, recent: float | None = None) -> dict[str, dict[str, float | None]]:
        """Requests and 5xx answers per version over the last ``window`` seconds, and with ``recent`` each
        version's p95 over the last ``recent`` seconds: ``RouterMetrics.counts``'s contract
        (``releasegate.reports.traffic.TrafficCounter``).

        From the ring log when the reader follows it: every request HAProxy logged (when it finished), counted
        only since the reader started (when the rollout's providers were built), attributed by server slot.
        Without a ring (an operator's configuration), from the ``show stat`` counters: the change since the
        oldest reading kept of each version (readings are taken at each route change, ``baseline``, and each
        query), so a version's requests before its first reading in this process are not in it; a version no
        longer routed keeps its count up to its last reading. p95 only comes from the ring (None without it).
        Raises ``ProviderError`` when HAProxy answers neither way (nothing is recorded then)."""
        ring = self.ring
        if ring is not None and ring.error is None and ring.since is not None:
            now = self.wall()
            stats = await asyncio.to_thread(ring.windows, window, now)
            out: dict[str, dict[str, float | None]] = {
                name: {"requests": s["requests"], "errors": s["errors"]} for name, s in stats.items()}
        else:
            out = await self._counted(window)
        if recent is not None:
            latest = await asyncio.to_thread(ring.windows, recent, self.wall()) if ring is not None else {}
            for name, counted in out.items():
                s = latest.get(name)
                p95 = s["latency_p95"] if s is not None and s["requests"] else None
                counted["p95"] = float(p95) if p95 is not None else None
        return out

    async def _counted(self, window: float) -> dict[str, dict[str, float | None]]:
        """Per-version counts from the running totals (no ring): now (or, for a version no longer routed, its
        last reading) minus the reading at or before ``window`` ago, else the oldest one."""
        out: dict[str, dict[str, float | None]] = {}
        versions = set(self._history) | set(self.router.slot_versions().values())
        for version in sorted(versions):
            history = self._history.setdefault(version, deque())
            reading = await self.reading(version)
            at = self.clock()
            if reading is not None:
                history.append((at, reading))
                _prune(history, at)
            if not history:
                continue
            base = _baseline(history, at, window) or history[0]
            requests, errors = _delta(base[1], history[-1][1])
            out[version] = {"requests": requests, "errors": errors}
        return out

    async def _latency(self, q: MetricQuery) -> tuple[float | None, str | None]:
        ring = self.ring
        if ring is None:
            return None, "this HAProxy metric source was built without its ring reader"
        if q.window <= 0:
            return None, f"an empty window ({q.window:g}s)"
        stats = ring.window(q.version, q.window, self.wall())
        value = stats[q.metric] if stats is not None and stats["requests"] else None  # type: ignore[literal-required]
        if value is not None:
            return float(value), None
        if ring.error is not None:
            return None, ring.error
        rate, _ = await self._query(MetricQuery(q.service, q.version, "rps", q.window))
        if rate:  # the counters saw requests the ring did not: slow ones still running, or no log line at all
            needs = " / ".join(line.strip() for line in frontend_log_lines(self.router.spec, self.router.service))
            return None, (f"HAProxy counted {rate:.3g} requests/s to {q.version} in the last "
                          f"{format_duration(q.window)} but logged none of them to its ring {ring.ring}: they "
                          f"take longer than that, or the frontend does not log to the ring (it needs '{needs}')")
        return None, no_traffic(q.version, q.window)


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


def _delta(then: _Reading, now: _Reading) -> tuple[int, int]:
    """Requests and errors between two readings, per slot present in both; a slot whose totals went down was
    reset by a reload and counts from 0."""
    requests = errors = 0
    for slot, (req, err) in now.items():
        if slot not in then:
            continue
        req0, err0 = then[slot]
        reset = req < req0 or err < err0  # a reload started the counters again
        requests += req if reset else req - req0
        errors += err if reset else err - err0
    return requests, errors


def _prune(history: deque[tuple[float, _Reading]], at: float) -> None:
    while len(history) > 2 and history[1][0] <= at - KEEP:
        history.popleft()
