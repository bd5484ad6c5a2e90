"""Per-version request statistics in 1-second slots, cheap enough to record on every proxied request.

Why a histogram and not a list of samples: the controller asks for p95 over "the last 5 minutes" at any time,
and a busy router would have to keep millions of samples for that. Log-spaced buckets (x1.25 from 0.1 ms to 60
s) keep every percentile within one bucket (25 %) of the truth at a fixed cost per slot, and recording costs
one C-level ``bisect`` plus four list increments.

What "latency" means here (the router's one definition, documented in docs/benchmarks.md): from the
moment the router has the complete request head of a request to the moment the last byte of its response has
been handed to the client socket. Upload time of a request body is therefore included, as is the time to
stream the response.

Requests still waiting for their answer: latency is recorded when a response completes, so a version whose
requests take longer than the window asked for would show no latency at all in that window ("no data"), exactly
while it is too slow. ``window`` therefore also takes the start times of the requests that are waiting for the
backend's first response byte, and counts those that have waited through the whole window (age >= window) with
the time waited so far, a lower bound of their latency: stuck requests show while they are stuck, instead of "no
data" or only the few fast requests that did finish. Younger waiting requests are left for later windows (their
age says little yet), and so are answers that have started streaming. The counters behind ``GET /metrics`` stay
completion-only, as Prometheus histograms are.

Cumulative totals (for ``GET /metrics``, where Prometheus wants counters that only go up) cost nothing on the
hot path: a slot's counts are folded into the totals once its second is over, either when a scrape asks for
them or, if nobody scraped for an hour, when the ring reuses the slot. Counts per exact status code are only
cumulative (no ring: the windows the controller asks for need 5xx and all, nothing finer): one list indexed by
the code, so the cardinality is bounded by the 500 valid codes, plus index 0 for anything outside 100-599.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import TypedDict

SLOTS = 3600 + 2
"""At least an hour of history, plus the current partial second, plus one spare."""

_LOW = 0.0001
_FACTOR = 1.25
_HIGH = 60.0
BOUNDS: list[float] = []
"""Upper bounds of the latency buckets in seconds; bucket i holds [BOUNDS[i-1], BOUNDS[i]), the last is open."""
_b = _LOW
while _b < _HIGH * _FACTOR:
    BOUNDS.append(_b)
    _b *= _FACTOR
NBUCKETS = len(BOUNDS) + 1

NCODES = 600
"""Length of the per-code counts: index = status code (100-599); index 0 counts anything else ("other")."""


class WindowStats(TypedDict):
    requests: int
    errors: int
    rps: float
    error_rate: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    waiting: int  # requests that waited for an answer through the whole window, counted in the latencies
    latency_lower_bound: bool  # no request completed: the latencies are only the waiting requests' ages


class VersionStats:
    """One version's ring of 1-second slots; slot ``s % SLOTS`` is valid only while ``stamp`` equals ``s``."""

    __slots__ = ("codes", "cum_errors", "cum_hist", "cum_requests", "errors", "folded", "hist", "last", "requests",
                 "stamp")

    def __init__(self) -> None:
        self.last = int(time.perf_counter())  # the latest second with a request (or creation)
        self.stamp = [-1] * SLOTS
        self.requests = [0] * SLOTS
        self.errors = [0] * SLOTS
        self.hist = [0] * (SLOTS * NBUCKETS)
        self.folded = -1  # every second <= folded is already in the cum_* totals
        self.cum_requests = 0
        self.cum_errors = 0
        self.cum_hist = [0] * NBUCKETS
        self.codes = [0] * NCODES  # cumulative, by status code; never reset (Prometheus counters)

    def record(self, now: float, latency: float, status: int) -> None:
        """Count one finished request answered with ``status`` (5xx is an error); ``now`` is
        ``time.perf_counter()`` at the end of the response."""
        sec = int(now)
        i = sec % SLOTS
        if self.stamp[i] != sec:
            self._reset(i, sec)
        self.requests[i] += 1
        if status >= 500:
            self.errors[i] += 1
        self.hist[i * NBUCKETS + bisect_right(BOUNDS, latency)] += 1
        self.codes[status if 99 < status < NCODES else 0] += 1

    def _reset(self, i: int, sec: int) -> None:
        if self.stamp[i] > self.folded:  # not scraped for an hour: fold before the ring forgets the slot
            self._fold(i)
        self.last = sec
        self.stamp[i] = sec
        self.requests[i] = 0
        self.errors[i] = 0
        base = i * NBUCKETS
        self.hist[base:base + NBUCKETS] = [0] * NBUCKETS

    def _fold(self, i: int) -> None:
        self.cum_requests += self.requests[i]
        self.cum_errors += self.errors[i]
        base = i * NBUCKETS
        self.cum_hist = [a + b for a, b in zip(self.cum_hist, self.hist[base:base + NBUCKETS], strict=True)]

    def totals(self, now: float) -> tuple[int, int, list[int]]:
        """Requests, 5xx errors and latency bucket counts since this version's first request, as of ``now``.

        Folds the seconds completed since the last call (a scrape every 15 s folds about 15 slots), then adds
        the current partial second without folding it, since it may still grow."""
        cur = int(now)
        if cur - self.folded < SLOTS:
            for sec in range(self.folded + 1, cur):
                i = sec % SLOTS
                if self.stamp[i] == sec:
                    self._fold(i)
        else:  # the first scrape, or none for an hour: any slot may hold an unfolded second
            for i in range(SLOTS):
                if self.folded < self.stamp[i] < cur:
                    self._fold(i)
        self.folded = max(self.folded, cur - 1)
        requests, errors, hist = self.cum_requests, self.cum_errors, list(self.cum_hist)
        i = cur % SLOTS
        if self.stamp[i] == cur:
            requests += self.requests[i]
            errors += self.errors[i]
            base = i * NBUCKETS
            hist = [a + b for a, b in zip(hist, self.hist[base:base + NBUCKETS], strict=True)]
        return requests, errors, hist

    def status_counts(self) -> dict[str, int]:
        """Requests per exact status code (``"200"``, ``"502"``...) since this version's first request; codes
        outside 100-599 are counted as ``"other"``. Only codes seen appear. Always up to date: it sums to
        ``totals(now)[0]`` at any ``now`` not earlier than the last request's."""
        out = {str(code): n for code, n in enumerate(self.codes) if n and code}
        if self.codes[0]:
            out["other"] = self.codes[0]
        return out

    def window(self, seconds: float, now: float, started: float, waiting: Sequence[float] = ()) -> WindowStats:
        """Aggregate the whole seconds that overlap the last ``seconds`` (so between ``seconds`` and one second
        more of history, the current partial second included) as of ``now``; ``waiting`` holds the start times
        (``time.perf_counter()``) of this version's requests still waiting for an answer."""
        cur = int(now)
        # Every slot that overlaps [now - seconds, now]. Only the slots up to the current one would leave a 1 s
        # window asked for 0.2 s into a second with 0.2 s of data: mostly empty at a few requests per second.
        span = max(1, min(SLOTS - 1, cur - math.floor(now - seconds) + 1))
        requests = errors = 0
        rows = []
        hist = self.hist
        for sec in range(cur - span + 1, cur + 1):
            i = sec % SLOTS
            if self.stamp[i] != sec or not self.requests[i]:
                continue
            requests += self.requests[i]
            errors += self.errors[i]
            base = i * NBUCKETS
            rows.append(hist[base:base + NBUCKETS])
        # Column sums in C: an hour-long window is 3600 rows, and this runs on the data plane's event loop.
        merged = [sum(col) for col in zip(*rows, strict=True)] if rows else [0] * NBUCKETS
        # The time the window really covers: from the start of its oldest slot, but never more than the router
        # has been up (a router started 2 s ago has not seen 10 s of traffic).
        covered = max(min(now - (cur - span + 1), now - started), 1e-3)
        return _window_stats(requests, errors, requests / covered, merged, _ages(waiting, now, seconds))


def _ages(waiting: Sequence[float], now: float, seconds: float) -> list[float]:
    """How long each request waiting since before the window's start has waited so far."""
    return [now - t0 for t0 in waiting if now - t0 >= seconds]


def _window_stats(requests: int, errors: int, rps: float, merged: list[int], ages: list[float]) -> WindowStats:
    """The window's figures; percentiles over its completed requests and the ``ages`` of those still waiting.

    With no completed request the percentiles are taken from the ages themselves (nearest rank), not from the
    histogram, whose interpolation inside a 25 % wide bucket could put a lower bound above the truth."""
    p50: float | None
    p95: float | None
    p99: float | None
    if ages and not requests:
        ranked = sorted(ages)
        p50, p95, p99 = (ranked[max(0, math.ceil(q * len(ranked)) - 1)] for q in (0.50, 0.95, 0.99))
    else:
        for age in ages:
            merged[bisect_right(BOUNDS, age)] += 1
        total = requests + len(ages)
        p50, p95, p99 = (percentile(merged, total, q) for q in (0.50, 0.95, 0.99))
    return {"requests": requests, "errors": errors, "rps": rps,
            "error_rate": errors / requests if requests else None,
            "latency_p50": p50, "latency_p95": p95, "latency_p99": p99,
            "waiting": len(ages), "latency_lower_bound": bool(ages) and not requests}


def percentile(hist: list[int], total: int, q: float) -> float | None:
    """Linear interpolation inside the bucket holding the rank, as Prometheus' histogram_quantile does."""
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for b, n in enumerate(hist):
        if not n:
            continue
        if seen + n >= rank:
            lower = BOUNDS[b - 1] if b > 0 else 0.0
            upper = BOUNDS[b] if b < len(BOUNDS) else BOUNDS[-1] * _FACTOR
            return lower + (upper - lower) * max(0.0, rank - seen) / n
        seen += n
    return BOUNDS[-1] * _FACTOR


class Stats:
    """All versions' statistics for one router; versions appear on their first request."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.versions: dict[str, VersionStats] = {}

    def for_version(self, version: str) -> VersionStats:
        vs = self.versions.get(version)
        if vs is None:
            vs = self.versions[version] = VersionStats()
        return vs

    def prune(self, keep: tuple[str, ...], now: float | None = None) -> None:
        """Forget versions out of the routes whose last request is older than the history kept (about 2 MB
        each): a router that lives through hundreds of releases must not keep every version's ring."""
        horizon = int(time.perf_counter() if now is None else now) - SLOTS
        for name in [n for n, vs in self.versions.items() if n not in keep and vs.last < horizon]:
            del self.versions[name]

    def totals(self, known: tuple[str, ...] = (), now: float | None = None) -> dict[str, VersionTotals]:
        """Every version's counts since its first request (``known`` ones with zeros): what a judge differences
        between two looks, so consecutive intervals never share or miss a request as overlapping windows would."""
        at = time.perf_counter() if now is None else now
        out: dict[str, VersionTotals] = {}
        for name in sorted(set(self.versions) | set(known)):
            vs = self.versions.get(name)
            out[name] = sparse_totals(*vs.totals(at)) if vs is not None else sparse_totals(0, 0, [])
        return out

    def snapshot(self, seconds: float, version: str | None = None, known: tuple[str, ...] = (),
                 waiting: Mapping[str, Sequence[float]] | None = None) -> dict[str, WindowStats]:
        """Window statistics per version; ``known`` versions (those in the routes) appear even without traffic.
        ``waiting`` maps a version to the start times of its requests still waiting for an answer."""
        now = time.perf_counter()
        waiting = waiting or {}
        names = [version] if version is not None else sorted(set(self.versions) | set(known))
        out: dict[str, WindowStats] = {}
        for name in names:
            vs = self.versions.get(name)
            pending = waiting.get(name, ())
            if vs is not None:
                out[name] = vs.window(seconds, now, self.started, pending)
            else:
                out[name] = _window_stats(0, 0, 0.0, [0] * NBUCKETS, _ages(pending, now, seconds))
        return out


class VersionTotals(TypedDict):
    requests: int
    errors: int
    hist: dict[str, int]  # latency bucket index (as text, for JSON) -> requests; only non-empty buckets


def sparse_totals(requests: int, errors: int, hist: list[int]) -> VersionTotals:
    return {"requests": requests, "errors": errors, "hist": {str(i): n for i, n in enumerate(hist) if n}}


def dense(hist: dict[str, int]) -> list[int]:
    """A sparse histogram (``VersionTotals.hist``: bucket index as text -> count) as one count per bucket; indices
    outside the buckets are ignored."""
    out = [0] * NBUCKETS
    for bucket, n in hist.items():
        i = int(bucket)
        if 0 <= i < NBUCKETS:
            out[i] += n
    return out


def empty_window() -> WindowStats:
    return {"requests": 0, "errors": 0, "rps": 0.0, "error_rate": None,
            "latency_p50": None, "latency_p95": None, "latency_p99": None, "waiting": 0,
            "latency_lower_bound": False}
