"""Per-version request and error counts, recorded with the decisions for reports (docs/reports.md).

Why at decision time: the router keeps its per-second statistics for an hour, and a report may be asked for days
later; what reached the bad version, and how much of it failed, must be in the store when the post-mortem is
written. The counts never decide anything: the engine stays pure, the controller adds them to what it records.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from releasegate.engine.state import Decision, RolloutState
from releasegate.errors import ProviderError

Counts = dict[str, dict[str, float | None]]
Counter = Callable[[float, float | None], Awaitable[Counts]]
"""Requests and 5xx errors per version over the last N seconds, and p95 latency over the last M (a
``TrafficCounter``'s ``counts``)."""


@runtime_checkable
class TrafficCounter(Protocol):
    """A metric source that can say how many requests each version got: the built-in router's statistics
    (``RouterMetrics``), nginx's access log (``NginxLogMetrics``) and HAProxy's ring log or counters
    (``HaproxyStatsMetrics``). The registry hands ``counts`` to the controller when the source has it.

    The contract, as ``RouterMetrics.counts`` defines it: ``{version: {"requests": n, "errors": n}}`` over the last
    ``window`` seconds (ints, 0 when a version had none: a count, not a rate), for every version the source saw
    in that hour; with ``recent``, each version's ``p95`` latency (seconds) over the last ``recent`` seconds, None
    without a completed request there. ``ProviderError`` when the source cannot answer at all, so nothing is
    recorded ("not recorded", never a made-up 0)."""

    async def counts(self, window: float, recent: float | None = None) -> Counts: ...


ROUTER_HISTORY = 3600.0
"""Every counting router answers windows of at most an hour: the built-in router (releasegate/router/admin.py
MAX_WINDOW) and the nginx and HAProxy sources keep the same 1-second slots (``releasegate.router.stats.SLOTS``,
an hour and two seconds), and HAProxy's counter readings are kept an hour and a minute (``KEEP``)."""


async def with_traffic(counter: Counter | None, st: RolloutState, now: float,
                       decisions: list[Decision], recent: float | None = None) -> list[Decision]:
    """Each decision gets ``traffic``: ``{version: {"requests": n, "errors": n}}`` for the new and the previous
    version (and the baseline, ``<previous>+baseline``, while it runs or the router still counts it: what the
    judge compares), cumulative since the rollout started, and ``traffic_window``: the seconds those counts cover
    (capped at the router's hour). A router that cannot count, or does not answer, leaves the decisions as they
    were: "not recorded" in a report, never a made-up 0. With ``recent`` (the analysis interval), each version's
    ``p95`` latency over that interval too (seconds; None without requests): the dashboard's per-version chart."""
    if counter is None or not decisions:
        return decisions
    window = max(now - st.created_at, 1.0)
    try:
        counts = await counter(window, recent)
    except ProviderError:
        return decisions
    none: dict[str, float | None] = {"requests": 0, "errors": 0}
    wanted = {v: counts.get(v, none) for v in (st.version, st.previous) if v}
    if st.baseline is not None and (st.baseline_up or st.baseline in counts):  # the judge compares the two
        wanted[st.baseline] = counts.get(st.baseline, none)
    covered = min(window, ROUTER_HISTORY)
    return [Decision(d.kind, d.message, {**d.data, "traffic": wanted, "traffic_window": covered}) for d in decisions]
