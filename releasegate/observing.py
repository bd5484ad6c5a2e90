"""What one analysis interval sees, for the controller (releasegate/controller.py): every rule's value and why it
has none, the backends of a version whose process is gone, one health probe per instance, what holds traffic back
(a freeze, an unreachable host), and the judge's data. Everything the engine decides on at an ``Analyze``.

Why apart from the controller: the controller performs actions and records them; this reads the world, and the
reading grew (the baseline's dead backends, the judge's feed) past what one module should hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from releasegate.engine.analysis import rule_key
from releasegate.engine.state import Analyze, Observation, RolloutState
from releasegate.errors import ProviderError
from releasegate.judge_feed import JudgeFeed
from releasegate.providers.base import AtLeast, Instance, MetricQuery, Routes
from releasegate.providers.metrics.reasons import explain
from releasegate.spec.models import Spec

if TYPE_CHECKING:
    from releasegate.controller import Providers


class Observer:
    def __init__(self, providers: Providers, spec: Spec,
                 before_increase: Callable[[float], str | None] | None = None) -> None:
        self.p = providers
        self.spec = spec
        self.before_increase = before_increase
        self.feed = JudgeFeed(providers.totals, providers.metrics)
        self.baseline_failures: dict[str, int] = {}  # baseline address -> failed health checks in a row

    async def live(self, service: str, version: str) -> list[Instance]:
        """The live instances of ``version``, oldest first."""
        return _of(await self.p.platform.instances(service), version)

    async def observe(self, st: RolloutState, action: Analyze, at: float) -> Observation:
        values, missing = await self.measure(st, action, action.window)
        whole, whole_missing = await self.measure(st, action, action.whole) if action.whole is not None \
            else (None, {})
        baseline = st.baseline if st.phase == "step" and st.baseline is not None and st.baseline_up \
            and not st.baseline_lost else None
        # One read of the routes, then one of the platform, for the canary's and the baseline's dead backends
        # and health probes alike (on a fleet, reading the instances asks every host).
        routes = await self.routes(st)
        instances = await self.p.platform.instances(st.service)
        dead = self.dead(routes, instances, (action.version, baseline) if baseline else (action.version,))
        lost = dead.get(baseline, ()) if baseline else ()
        sick: dict[str, str] = {}
        if baseline and not lost:
            lost, sick = await self.baseline_health(_of(instances, baseline))
        return Observation(at=at, values=values, dead=dead[action.version], whole=whole,
                           held=self.held(at), missing=missing, whole_missing=whole_missing,
                           health=await self.probe(_of(instances, action.version)), dead_baseline=lost,
                           judge=self.feed.skip() if lost or sick
                           else await self.feed.look(st, self.spec, action.window),
                           judge_missing=None if lost or sick else self.feed.why)

    def held(self, now: float) -> str | None:
        """Why traffic may not increase now: the governance gate (a freeze), or a host that did not answer at the
        last look (an SSH fleet's: its instances are unknown, docs/ssh.md)."""
        held = self.before_increase(now) if self.before_increase is not None else None
        unreachable: dict[str, str] = getattr(self.p.platform, "unreachable", None) or {}
        return held or (f"held until every host answers: {'; '.join(unreachable.values())}" if unreachable else None)

    async def probe(self, instances: list[Instance]) -> dict[str, str | None] | None:
        """The new version's instances, each asked once for its health, directly (not through the router):
        the engine counts failures in a row and rolls back (health during the rollout)."""
        if self.p.probe is None:
            return None
        return await self.p.probe(instances, self.spec.health)

    async def baseline_health(self, instances: list[Instance]) -> tuple[tuple[str, ...], dict[str, str]]:
        """The baseline's instances, each asked once for its health like the canary's: (those that failed
        ``health.failure_threshold`` checks in a row, to be treated as lost like a dead one; those failing now).

        Why: a baseline that answers but fails (a full disk, a dependency it alone lost) makes any canary look
        better, which a judge must never see. An interval in which any baseline instance fails its check is
        never fed to the judge; enough of them in a row and the baseline is lost (its traffic goes back to the
        previous version, it is stopped, a judged step pauses). The count is kept here, not in the state: a
        resumed controller counts afresh, which only delays the verdict, and the judge sees no failing interval
        meanwhile."""
        if self.p.probe is None:
            return (), {}
        found = await self.p.probe(instances, self.spec.health)
        sick = {address: why for address, why in found.items() if why is not None}
        self.baseline_failures = {a: self.baseline_failures.get(a, 0) + 1 for a in sick}
        limit = self.spec.health.failure_threshold
        lost = tuple(sorted(f"{a} (failed {n} health checks in a row: {sick[a]})"
                            for a, n in self.baseline_failures.items() if n >= limit))
        return lost, sick

    async def measure(self, st: RolloutState, action: Analyze,
                      window: float) -> tuple[dict[str, float | None], dict[str, str]]:
        """Every rule's metric over the last ``window`` seconds, and why each rule without a value has none (an
        unreachable source, no traffic, a metric the source cannot measure); an unreachable source is no data,
        never 0."""
        values: dict[str, float | None] = {}
        missing: dict[str, str] = {}
        for i, rule in enumerate(self.spec.analysis.rules):
            key = rule_key(i, rule)
            q = MetricQuery(st.service, action.version, rule.metric, window, action.baseline, rule.query)
            why: str | None = None
            try:
                values[key] = await self.p.metrics.query(q)
            except ProviderError as exc:
                values[key], why = None, str(exc)
            if values[key] is None or isinstance(values[key], AtLeast):  # a lower bound may count as no data
                why = why or explain(self.p.metrics, q)
                if why:
                    missing[key] = why
        return values, missing

    async def routes(self, st: RolloutState) -> Routes | None:
        """The routes the router serves; None when it cannot be read (then no backend is judged dead)."""
        try:
            return await self.p.router.get_routes(st.service)
        except ProviderError:
            return None

    @staticmethod
    def dead(routes: Routes | None, instances: list[Instance],
             versions: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        """Per version, the backends the router sends its traffic to whose process is gone."""
        none: dict[str, tuple[str, ...]] = {v: () for v in versions}
        if routes is None:
            return none
        live = {(i.version, i.address) for i in instances}
        return {**none, **{v.version: tuple(sorted(b for b in v.backends if (v.version, b) not in live))
                           for v in routes.versions if v.version in versions and v.weight > 0}}


def _of(instances: list[Instance], version: str) -> list[Instance]:
    """The instances of ``version``, oldest first."""
    return sorted((i for i in instances if i.version == version), key=lambda i: (i.started_at, i.id))


__all__ = ["Observer"]
