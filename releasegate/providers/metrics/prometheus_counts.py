"""The judge's counts from Prometheus counters (``analysis.judge.counts``, docs/judge.md): the same ``Snapshot`` the
router's running totals give (releasegate/providers/metrics/totals.py), read with one instant query per counter and
version.

Why this source keeps running totals of its own rather than handing out Prometheus' values: a query's counter is a
sum over instances, and when one instance restarts its counters start again at 0, so the sum drops without going
to 0. Read as the router's totals are (a drop means "counting started again, the new totals are the increment"),
that sum would count every request the other instances ever served as new. So the readings are differenced here,
and a drop, or errors growing more than requests (the two queries do not count the same requests), leaves that
interval out for every version (no data: never 0 errors, never a made-up increment); counting goes on from the new
readings. The totals handed out only grow, since this source started (its ``epoch``).

Why one evaluation time for all queries of a look: the canary's and the reference's counters then come from the
same scrapes, not from two sides of a scrape that lands between two queries.

Latency: a ``sum by (le)`` of cumulative buckets with any edges becomes the router's bucket layout (x1.25
log-spaced, ``releasegate.router.stats.BOUNDS``): each Prometheus bucket's count goes into the router bucket that
holds its geometric middle. Edges that are the router's own (a Prometheus scraping the built-in router's
``GET /metrics``) map one to one; coarser edges lose resolution, the same way for both versions.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from releasegate.errors import ProviderError
from releasegate.providers.metrics.prometheus import PrometheusMetrics, render_query, value_of
from releasegate.providers.metrics.totals import Snapshot
from releasegate.router.stats import _FACTOR, BOUNDS, NBUCKETS, sparse_totals
from releasegate.spec.judge_counts import JudgeCounts


@dataclass(frozen=True)
class Reading:
    """One version's counters at one look: requests, 5xx errors, and requests per router latency bucket (empty
    without a latency query)."""

    requests: int
    errors: int
    hist: tuple[int, ...] = ()


ZERO = Reading(0, 0)


def router_bucket(lo: float, hi: float) -> int:
    """The router bucket for a Prometheus bucket (lo, hi]: the one holding its geometric middle. The first bucket
    (from 0) counts at hi/2, the open last one (+Inf) half a router bucket above lo."""
    if math.isinf(hi):
        point = lo * math.sqrt(_FACTOR)
    elif lo <= 0:
        point = hi / 2
    else:
        point = math.sqrt(lo * hi)
    return bisect_right(BOUNDS, point)


def to_router(cumulative: list[tuple[float, float]]) -> tuple[tuple[int, ...] | None, str | None]:
    """Cumulative ``(le, count)`` pairs (sorted by le) as requests per router bucket, or (None, why not)."""
    out = [0] * NBUCKETS
    lo, below = 0.0, 0
    for le, count in cumulative:
        total = round(count)
        if total < below:
            return None, f"the latency buckets are not cumulative (le={le:g} counts {total}, below {below})"
        if total > below:
            out[router_bucket(lo, le)] += total - below
        lo, below = le, total
    return tuple(out), None


def buckets_of(data: Any) -> tuple[list[tuple[float, float]] | None, str | None]:
    """The ``(le, cumulative count)`` pairs of a ``sum by (le)`` answer, sorted by le, or (None, why not)."""
    if not isinstance(data, dict) or data.get("status") != "success" or not isinstance(data.get("data"), dict):
        error = data.get("error") if isinstance(data, dict) else None
        return None, f"Prometheus answered with an error: {error or 'unexpected response'}"
    result = data["data"].get("result")
    if data["data"].get("resultType") != "vector" or not isinstance(result, list):
        return None, "the latency query must return an instant vector, one series per le"
    if not result:
        return None, "the latency query returned no series (no data yet)"
    pairs: list[tuple[float, float]] = []
    for series in result:
        try:
            le, value = float(series["metric"]["le"]), float(series["value"][1])
        except (TypeError, ValueError, KeyError, IndexError):
            return None, "the latency query must return one series per le: sum by (le) (..._bucket{...})"
        if not math.isfinite(value) or value < 0:
            return None, f"the latency query returned {value} for le={le:g}"
        pairs.append((le, value))
    pairs.sort()
    if len({le for le, _ in pairs}) != len(pairs):
        return None, "the latency query returned several series per le: aggregate with sum by (le) (...)"
    return pairs, None


def advance(sums: dict[str, Reading], before: dict[str, Reading],
            now: dict[str, Reading]) -> tuple[dict[str, Reading], str | None]:
    """The running totals of ``now``'s versions after a look, and why this look added nothing (or None).

    Each version's totals grow by what its counters grew since ``before``; a version read for the first time
    starts at 0 (its first reading only sets where counting starts). A counter that went down (an instance
    restarted) or errors that grew more than requests leave the whole interval out, for every version."""
    why = None
    for version, reading in now.items():
        then = before.get(version)
        if then is None:
            continue
        if reading.requests < then.requests or reading.errors < then.errors or any(
                a < b for a, b in zip(reading.hist, then.hist, strict=False)):
            why = f"a counter of {version} went down (an instance restarted?)"
        elif reading.errors - then.errors > reading.requests - then.requests:
            why = (f"{version}'s errors grew more than its requests ({reading.errors - then.errors} > "
                   f"{reading.requests - then.requests}): the two queries do not count the same requests")
        if why:
            break
    out: dict[str, Reading] = {}
    for version, reading in now.items():
        total, then = sums.get(version, ZERO), before.get(version)
        if then is None or why is not None:
            out[version] = total if then is not None else ZERO
            continue
        grown = [a - b for a, b in zip(reading.hist, then.hist, strict=False)] if then.hist else []
        hist = tuple(t + g for t, g in zip(total.hist or (0,) * len(grown), grown, strict=True))
        out[version] = Reading(total.requests + reading.requests - then.requests,
                               total.errors + reading.errors - then.errors, hist)
    return out, why


class PrometheusCounts:
    """Per-version running totals from ``analysis.judge.counts`` (for ``JudgeFeed``); ``last_error`` keeps why the
    latest look had no data, as ``PrometheusMetrics`` does for rules."""

    def __init__(self, service: str, counts: JudgeCounts, prometheus: PrometheusMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.counts = counts
        self.prometheus = prometheus
        self.clock = clock
        self.epoch = f"prometheus:{clock():.6f}"
        self.raw: dict[str, Reading] = {}
        self.sums: dict[str, Reading] = {}
        self.last_error: str | None = None

    async def totals(self, versions: tuple[str, ...]) -> Snapshot:
        """The running totals of ``versions`` now; ``ProviderError`` (the reason also in ``last_error``) when any
        query gives no number: no data for that interval, never 0."""
        at = self.clock()
        readings = {version: await self._read(version, at) for version in dict.fromkeys(versions)}
        self.sums, self.last_error = advance(self.sums, self.raw, readings)
        if self.last_error is not None:
            self.last_error += "; this interval is left out and counting starts again from these readings"
        self.raw = readings
        return Snapshot(self.epoch, {v: sparse_totals(r.requests, r.errors, list(r.hist))
                                     for v, r in self.sums.items()})

    async def _read(self, version: str, at: float) -> Reading:
        requests = await self._number("requests", self.counts.requests, version, at)
        errors = await self._number("errors", self.counts.errors, version, at)
        if errors > requests:
            raise self._fail(f"errors ({errors}) above requests ({requests}) for {version}: the two queries do "
                             "not count the same requests")
        if self.counts.latency is None:
            return Reading(requests, errors)
        pairs, why = buckets_of(await self._fetch("latency", self.counts.latency, version, at))
        hist, why = to_router(pairs) if pairs is not None else (None, why)
        if hist is None:
            raise self._fail(f"counts.latency for {version}: {why}")
        return Reading(requests, errors, hist)

    async def _number(self, what: str, template: str, version: str, at: float) -> int:
        value, why = value_of(await self._fetch(what, template, version, at))
        if value is None:
            raise self._fail(f"counts.{what} for {version}: {why}")
        if value < 0:
            raise self._fail(f"counts.{what} for {version} is negative ({value:g}): not a counter")
        return round(value)

    async def _fetch(self, what: str, template: str, version: str, at: float) -> Any:
        promql = render_query(template, self.service, version, None) or template  # no {{baseline_version}} here
        data, why = await self.prometheus.fetch(promql, at)
        if why is not None:
            raise self._fail(f"counts.{what} for {version}: {why}")
        return data

    def _fail(self, why: str) -> ProviderError:
        self.last_error = why
        return ProviderError(why)


__all__ = ["PrometheusCounts", "Reading", "advance", "buckets_of", "router_bucket", "to_router"]
