"""Why a rule has no value, as the controller records it in ``Observation.missing`` / ``whole_missing``: the
operator must read "no traffic to 2.0.0", "Prometheus ... unreachable" or "router kind ... cannot measure",
not a bare "no data".

The sources are the real ones, pointed at real things that are absent: a closed port for Prometheus and for the
built-in router's admin API, an nginx access log without lines for the version, an nginx without a log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from releasegate.controller import CheckOutcome, Controller, Providers
from releasegate.engine.clock import FakeClock
from releasegate.engine.state import Analyze, RolloutState
from releasegate.errors import ProviderError
from releasegate.observing import Observer
from releasegate.providers.base import Instance, MetricQuery, MetricSource
from releasegate.providers.metrics.builtin import RouterMetrics
from releasegate.providers.platforms import make_platform
from releasegate.providers.registry import MetricsByName, build_providers
from releasegate.providers.routers.builtin import BuiltinRouterClient
from releasegate.spec.models import Spec
from releasegate.store.sqlite import Store
from tests.support.router_helpers import free_port

CLOCK_START = 1_767_225_600.0


def make_spec(tmp_path: Path, router: dict[str, Any], rules: list[dict[str, Any]], prometheus: int) -> Spec:
    # Spec.model_validate, not load_spec: the capability check of validate would refuse the rules that nothing
    # can measure, and a stored spec (a rollout started before that check) is read back exactly this way.
    return Spec.model_validate({
        "service": "shop", "platform": {"command": "true {port}"}, "router": router,
        "metrics": {"prometheus": {"url": f"http://127.0.0.1:{prometheus}", "timeout": "1s"}},
        "analysis": {"interval": "10s", "rules": rules}})


RULES: list[dict[str, Any]] = [{"metric": "error_rate", "max": 0.05}, {"metric": "latency_p95", "max": "2s"},
         {"metric": "prometheus", "query": 'sum(rate(x{version="{{version}}"}[1m]))', "max": 1},
         {"metric": "rps", "min": 0}]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state")
    yield s
    s.close()


def rollout(clock: FakeClock) -> RolloutState:
    return RolloutState(id="r1", service="shop", version="2.0.0", previous="1.0.0", strategy="canary",
                        phase="step", phase_started=clock.now(), created_at=clock.now())


async def analyze(controller: Controller, clock: FakeClock, whole: float | None = None) -> Any:
    action = Analyze(at=clock.now(), window=10.0, version="2.0.0", baseline="1.0.0", whole=whole)
    return await controller._analyze(rollout(clock), action)


async def test_no_traffic_and_an_unreachable_prometheus(tmp_path: Path, store: Store) -> None:
    log = tmp_path / "access.log"
    log.write_text("")  # nginx wrote its log, and no line for 2.0.0
    prometheus = free_port()  # nothing listens there
    spec = make_spec(tmp_path, {"kind": "nginx", "config_file": str(tmp_path / "shop.conf"),
                                "access_log": str(log)}, RULES, prometheus)
    clock = FakeClock(CLOCK_START)
    providers = await build_providers(spec, tmp_path, tmp_path / "state", clock)
    obs = await analyze(Controller(store, spec, providers, clock), clock, whole=600.0)
    assert obs.values == {"0:error_rate": None, "1:latency_p95": None, "2:prometheus": None, "3:rps": 0.0}
    assert obs.missing["0:error_rate"] == "no traffic to 2.0.0 in the last 10s"
    assert obs.missing["1:latency_p95"] == "no traffic to 2.0.0 in the last 10s"
    assert obs.missing["2:prometheus"].startswith(f"Prometheus at http://127.0.0.1:{prometheus} is unreachable")
    assert "3:rps" not in obs.missing  # it has a value: 0 requests per second is a true rate
    assert obs.whole_missing["0:error_rate"] == "no traffic to 2.0.0 in the last 10m"


async def test_a_router_that_cannot_measure_the_metric(tmp_path: Path, store: Store) -> None:
    spec = make_spec(tmp_path, {"kind": "nginx", "config_file": str(tmp_path / "shop.conf"), "access_log": "off"},
                     RULES[:2], free_port())
    clock = FakeClock(CLOCK_START)
    providers = await build_providers(spec, tmp_path, tmp_path / "state", clock)
    obs = await analyze(Controller(store, spec, providers, clock), clock)
    assert obs.missing == {"0:error_rate": "router kind nginx with access_log: off cannot measure error_rate",
                           "1:latency_p95": "router kind nginx with access_log: off cannot measure latency_p95"}


async def test_an_unreachable_builtin_router(tmp_path: Path, store: Store) -> None:
    spec = make_spec(tmp_path, {"kind": "builtin"}, RULES[:1], free_port())
    admin = f"127.0.0.1:{free_port()}"
    metrics = MetricsByName(RouterMetrics(BuiltinRouterClient(admin, timeout=1.0)), NoProcess())
    clock = FakeClock(CLOCK_START)
    observer = Observer(providers_with(spec, tmp_path, metrics), spec)
    values, missing = await observer.measure(rollout(clock), Analyze(clock.now(), 10.0, "2.0.0", None), 10.0)
    assert values == {"0:error_rate": None}
    assert missing["0:error_rate"].startswith(f"the built-in router's admin API at {admin} is unreachable")


async def test_a_source_that_raises_gives_its_message(tmp_path: Path, store: Store) -> None:
    spec = make_spec(tmp_path, {"kind": "builtin"}, RULES[:1], free_port())
    clock = FakeClock(CLOCK_START)
    observer = Observer(providers_with(spec, tmp_path, Raising()), spec)
    values, missing = await observer.measure(rollout(clock), Analyze(clock.now(), 10.0, "2.0.0", None), 10.0)
    assert values == {"0:error_rate": None}
    assert missing == {"0:error_rate": "the metrics backend at 127.0.0.1:1 is unreachable"}


class Raising:
    """A third-party ``MetricSource`` that reports its failure by raising, as the protocol allows."""

    async def query(self, q: MetricQuery) -> float | None:
        raise ProviderError("the metrics backend at 127.0.0.1:1 is unreachable")


class NoProcess:
    async def query(self, q: MetricQuery) -> float | None:
        return None


def providers_with(spec: Spec, tmp_path: Path, metrics: MetricSource) -> Providers:
    platform = make_platform(spec.platform, tmp_path / "state", tmp_path)

    async def never(instances: list[Instance], what: Any) -> CheckOutcome:
        raise AssertionError("not part of an analysis")

    return Providers(platform=platform, router=BuiltinRouterClient("127.0.0.1:1"), metrics=metrics,
                     health=never, smoke=never)
