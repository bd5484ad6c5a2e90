"""Choose providers by the spec's ``kind`` and bundle them for the controller.

Adding a platform or router (SSH, Kubernetes, nginx, HAProxy) means adding one module and one branch here; the
engine and the controller do not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from releasegate.controller import CheckOutcome, Providers
from releasegate.engine.clock import Clock
from releasegate.errors import ProviderError
from releasegate.providers import checks
from releasegate.providers.base import Instance, MetricQuery, MetricSource, Router, Routes
from releasegate.providers.metrics.builtin import RouterMetrics
from releasegate.providers.metrics.process import ProcessMetrics
from releasegate.providers.metrics.reasons import cannot_measure, explain
from releasegate.providers.metrics.totals import TotalsReader, TotalsSource, every_version
from releasegate.providers.platforms import make_platform
from releasegate.providers.routers.builtin import BuiltinRouterClient, ensure_router
from releasegate.reports.traffic import TrafficCounter
from releasegate.spec.models import PROCESS_METRICS, BuiltinRouter, SmokeTest, Spec
from releasegate.spec.models import Health as HealthSpec
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from releasegate.spec.routers_nginx import NginxRouter as NginxRouterSpec


class NoData:
    """For a router that measures nothing (nginx with ``access_log: off``): every traffic rule is inconclusive,
    so a rollout waits rather than promote on missing evidence. ``validate`` refuses such rules beforehand
    (``releasegate.spec.capabilities``); this is the reason given should one get here anyway."""

    def __init__(self, router_kind: str = "nginx") -> None:
        self.router_kind = router_kind

    async def query(self, q: MetricQuery) -> float | None:
        return None

    def explain(self, q: MetricQuery) -> str | None:
        return cannot_measure(self.router_kind, q.metric)


class MetricsByName:
    """Routes each metric to the source that measures it: the router for traffic, the platform for processes,
    Prometheus for PromQL rules; ``explain`` asks the same source why it had no value."""

    def __init__(self, traffic: MetricSource, process: MetricSource, prometheus: MetricSource | None = None) -> None:
        self.traffic = traffic
        self.process = process
        self.prometheus = prometheus

    def _source(self, q: MetricQuery) -> MetricSource | None:
        if q.metric == "prometheus":
            return self.prometheus
        return self.process if q.metric in PROCESS_METRICS else self.traffic

    async def query(self, q: MetricQuery) -> float | None:
        source = self._source(q)
        return await source.query(q) if source is not None else None

    def explain(self, q: MetricQuery) -> str | None:
        source = self._source(q)
        if source is None:
            return "no Prometheus is configured (metrics.prometheus) for metric: prometheus"
        last_error = getattr(source, "last_error", None)  # PrometheusMetrics says why in last_error
        if q.metric == "prometheus" and isinstance(last_error, str):
            return last_error
        return explain(source, q)


class ManagedBuiltinRouter:
    """The built-in router client, restarting the router process (with its persisted routes) if it died."""

    def __init__(self, state_dir: Path, spec: Spec, router: BuiltinRouter, client: BuiltinRouterClient,
                 metrics: RouterMetrics) -> None:
        self.state_dir = state_dir
        self.spec = spec
        self.router_spec = router
        self.client = client
        self.metrics = metrics

    async def _retry(self) -> BuiltinRouterClient:
        """A restarted router may listen for admin calls on a new port: every user of the client follows."""
        self.client = await ensure_router(self.state_dir, self.spec.service, self.router_spec)
        self.metrics.client = self.client
        return self.client

    async def set_routes(self, service: str, routes: Routes) -> None:
        try:
            await self.client.set_routes(service, routes)
        except ProviderError:
            await (await self._retry()).set_routes(service, routes)

    async def get_routes(self, service: str) -> Routes:
        try:
            return await self.client.get_routes(service)
        except ProviderError:
            return await (await self._retry()).get_routes(service)

    async def inflight(self, service: str, backend: str) -> int:
        return await self.client.inflight(service, backend)


class Baselines(Protocol):
    async def baseline(self, versions: list[str]) -> None: ...


class BaselinedRouter:
    """A router whose metric source counts running totals (HAProxy): every route change is followed by a reading of
    the routed versions' counters, so a step's first analysis window measures from the moment traffic moved."""

    def __init__(self, router: Router, metrics: Baselines) -> None:
        self.router = router
        self.metrics = metrics

    async def set_routes(self, service: str, routes: Routes) -> None:
        await self.router.set_routes(service, routes)
        await self.metrics.baseline([v.version for v in routes.versions if v.weight > 0])

    async def get_routes(self, service: str) -> Routes:
        return await self.router.get_routes(service)

    async def inflight(self, service: str, backend: str) -> int:
        return await self.router.inflight(service, backend)


Closer = Callable[[], Awaitable[None]] | None


async def _router(spec: Spec, state_dir: Path) -> tuple[Router, MetricSource, Closer]:
    """The router for the spec's kind, the metric source for its traffic statistics, and what stops that source
    (HAProxy's ring reader is a thread)."""
    if isinstance(spec.router, BuiltinRouter):
        client = await ensure_router(state_dir, spec.service, spec.router)
        traffic = RouterMetrics(client)
        return ManagedBuiltinRouter(state_dir, spec, spec.router, client, traffic), traffic, None
    if isinstance(spec.router, NginxRouterSpec):
        from releasegate.providers.metrics.nginx_log import NginxLogMetrics
        from releasegate.providers.routers.nginx import NginxRouter

        nginx = NginxRouter(spec.router, state_dir, spec.service)
        log = nginx.log_path
        if log is None:
            return nginx, NoData("nginx with access_log: off"), None
        return nginx, NginxLogMetrics(log, spec.service, nginx), None
    if isinstance(spec.router, HaproxyRouterSpec):
        from releasegate.providers.metrics.haproxy import HaproxyStatsMetrics
        from releasegate.providers.routers.haproxy import HaproxyRouter

        haproxy = HaproxyRouter(spec.router, spec.service)
        haproxy.ensure_config()  # renders only a missing file; haproxy must be (re)loaded by its supervisor
        stats = HaproxyStatsMetrics(haproxy, ring=True)
        stats.start()  # follows the ring from now on: before the first route change of this rollout
        return BaselinedRouter(haproxy, stats), stats, stats.close
    raise ProviderError(f"router kind {spec.router.kind} is not available yet in this build")


async def build_providers(spec: Spec, spec_dir: Path, state_dir: Path, clock: Clock) -> Providers:
    platform = make_platform(spec.platform, state_dir, spec_dir)
    router, traffic, close = await _router(spec, state_dir)

    async def health(instances: list[Instance], h: HealthSpec) -> CheckOutcome:
        r = await checks.wait_healthy(instances, h, clock, platform=platform)
        return CheckOutcome(r.ok, r.reason, dict(r.details))

    async def smoke(instances: list[Instance], tests: list[SmokeTest]) -> CheckOutcome:
        r = await checks.run_smoke(instances, tests, timeout=max(spec.health.timeout, 5.0), spec_dir=spec_dir)
        return CheckOutcome(r.ok, r.reason, dict(r.details))

    prometheus = None
    totals: TotalsReader | None = every_version(traffic) if isinstance(traffic, TotalsSource) else None
    if spec.metrics.prometheus is not None:
        from releasegate.providers.metrics.prometheus import PrometheusMetrics

        prometheus = PrometheusMetrics(spec.metrics.prometheus)
        counts = spec.analysis.judge.counts if spec.analysis.judge is not None else None
        if counts is not None:  # the judge counts from Prometheus counters instead of the router's totals
            from releasegate.providers.metrics.prometheus_counts import PrometheusCounts

            totals = PrometheusCounts(spec.service, counts, prometheus).totals
    own = getattr(platform, "metric_source", None)  # a platform that measures its instances its own way
    metrics = MetricsByName(traffic, own() if own is not None else ProcessMetrics(platform), prometheus)
    migrate = None
    if spec.migrations is not None:
        migrations = spec.migrations

        async def migrate(allow_breaking: bool) -> CheckOutcome:
            """Blocking database work in a thread; a failure has already restored the backup when it returns."""
            import asyncio

            from releasegate.errors import ReleasegateError
            from releasegate.migrations import apply_pending

            try:
                result = await asyncio.to_thread(apply_pending, migrations, spec_dir, allow_breaking)
            except ReleasegateError as exc:
                return CheckOutcome(False, str(exc), {})
            return CheckOutcome(True, "", {"applied": result.applied, "backup": str(result.backup or ""),
                                           "recorded": result.recorded})

    async def close_all() -> None:
        """The router's helpers, then the platform's connections (an SSH fleet's pooled sessions)."""
        if close is not None:
            await close()
        close_platform = getattr(platform, "close", None)
        if close_platform is not None:
            await close_platform()

    return Providers(platform=platform, router=router, metrics=metrics, health=health, smoke=smoke,
                     migrate=migrate, close=close_all,
                     traffic=traffic.counts if isinstance(traffic, TrafficCounter) else None,
                     totals=totals,
                     probe=checks.engine_probe(platform) if isinstance(platform, checks.EngineHealth)
                     else checks.probe_health)
