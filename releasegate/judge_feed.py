"""The controller's side of the sequential judge (engine/judging.py, docs/judge.md): at each analysis interval of
a canary step, what the canary and its reference (the baseline, else the previous version) served since the last
look, read from the router's running totals (releasegate/providers/metrics/totals.py; or, with
``analysis.judge.counts``, from Prometheus counters: prometheus_counts.py) and, for PromQL metrics, one query per
side.

Why the last snapshot lives here, in memory, and not in the store: a resumed controller starts with a fresh look,
so the interval across the restart is skipped, never counted twice; leaving data out (on request counts and time
alone, never on outcomes) keeps the judge's guarantee. Reads that fail give no data for that interval: the judge
then has no new evidence, and a step cannot pass on it.
"""

from __future__ import annotations

from typing import Any

from releasegate.engine.judging import reference
from releasegate.engine.state import RolloutState
from releasegate.errors import ProviderError
from releasegate.providers.base import AtLeast, MetricQuery, MetricSource
from releasegate.providers.metrics.reasons import explain
from releasegate.providers.metrics.totals import Snapshot, TotalsReader, increments
from releasegate.spec.models import Spec

_NONE = {"requests": 0, "errors": 0, "hist": {}}


class JudgeFeed:
    def __init__(self, totals: TotalsReader | None, metrics: MetricSource) -> None:
        self.totals = totals
        self.metrics = metrics
        self.last: Snapshot | None = None
        self.why: str | None = None  # why the latest look gave the judge no requests of a side, for status

    async def look(self, st: RolloutState, spec: Spec, window: float) -> dict[str, Any] | None:
        """This interval's data for the judge, or None (no judge, not a step, nothing readable, the first look)."""
        judge = spec.analysis.judge
        if judge is None or st.phase != "step":
            return None
        ref = reference(st)
        counts: dict[str, Any] | None = None
        self.why = None
        if self.totals is not None and ref is not None:
            snap: Snapshot | None
            try:
                snap = await self.totals((st.version, ref))
            except ProviderError as exc:
                snap, self.why = None, str(exc)
            before, self.last = self.last, snap
            if before is not None and snap is not None:
                served = increments(before, snap)
                counts = {"canary": served.get(st.version, _NONE), "reference": served.get(ref, _NONE)}
                self.why = await self._why_none(st, counts, ref, window)
        prometheus = [[await self._value(st, st.version, ref, m.query, window),
                       await self._value(st, ref, ref, m.query, window)]
                      for m in judge.metrics if m.query is not None and ref is not None]
        if counts is None and not any(v is not None for pair in prometheus for v in pair):
            return None
        return {**(counts or {}), "prometheus": prometheus}

    def skip(self) -> dict[str, Any] | None:
        """This interval is not fed (a baseline instance died in it): the next look starts counting afresh, so
        the failures of a dying baseline never reach the judge."""
        self.last = None
        return None

    async def _why_none(self, st: RolloutState, counts: dict[str, Any], ref: str, window: float) -> str | None:
        """Why a side served no request the router counted in this interval (an HAProxy without the ring, an
        nginx log not written, no traffic): asked of the metric source, as a rule's missing value is."""
        for side, version in (("canary", st.version), ("reference", ref)):
            if not counts[side]["requests"]:
                q = MetricQuery(st.service, version, "error_rate", window)
                try:
                    await self.metrics.query(q)
                except ProviderError as exc:
                    return str(exc)
                return explain(self.metrics, q) or f"no request to {version} was counted in this interval"
        return None

    async def _value(self, st: RolloutState, version: str | None, ref: str | None, query: str,
                     window: float) -> float | None:
        if version is None:
            return None
        try:
            value = await self.metrics.query(MetricQuery(st.service, version, "prometheus", window, ref, query))
        except ProviderError:
            return None
        return None if value is None or isinstance(value, AtLeast) else float(value)


__all__ = ["JudgeFeed"]
