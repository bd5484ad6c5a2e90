"""The HAProxy router against a real haproxy on loopback: splits, read-back, reloads, draining, no failed request."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from releasegate.errors import ProviderError
from releasegate.providers.base import MetricQuery, Routes, VersionRoute
from releasegate.providers.metrics.haproxy import HaproxyStatsMetrics
from releasegate.providers.routers.haproxy import HaproxyRouter, Server, server_state_path
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec

if TYPE_CHECKING:  # mypy sees the helpers as the tests.support package; at run time either layout works
    from tests.support.haproxy import HAPROXY, DemoApp, Haproxy, free_port
    from tests.support.wait import eventually
else:
    try:
        from support.haproxy import HAPROXY, DemoApp, Haproxy, free_port
        from support.wait import eventually
    except ImportError:  # pragma: no cover - when tests/ is a package
        from tests.support.haproxy import HAPROXY, DemoApp, Haproxy, free_port
        from tests.support.wait import eventually

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which(HAPROXY) is None, reason="haproxy is not installed")]

SERVICE = "shop"


def make_spec(tmp_path: Path, socket: Path | None = None) -> HaproxyRouterSpec:
    return HaproxyRouterSpec(kind="haproxy", listen=f"127.0.0.1:{free_port()}", config_file=str(tmp_path / "h.cfg"),
                             stats_socket=str(socket or tmp_path / "admin.sock"), slots=2)


@pytest.fixture
def apps() -> Iterator[tuple[DemoApp, DemoApp]]:
    v1, v2 = DemoApp("1.0.0").start(), DemoApp("2.0.0").start()
    yield v1, v2
    v1.stop()
    v2.stop()


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[HaproxyRouter, Haproxy]]:
    spec = make_spec(tmp_path)
    router = HaproxyRouter(spec, SERVICE)
    assert router.ensure_config() is True
    assert router.ensure_config() is False  # rendered once, never overwritten
    proc = Haproxy(Path(spec.config_file), Path(spec.stats_socket), tmp_path / "haproxy.pid").start()
    yield router, proc
    proc.stop()


def split(v1: DemoApp, w1: int, v2: DemoApp, w2: int) -> Routes:
    """New version first, as the controller orders them."""
    return Routes((VersionRoute("2.0.0", w2, (v2.backend,)), VersionRoute("1.0.0", w1, (v1.backend,))))


async def count_versions(router: HaproxyRouter, n: int) -> Counter[str]:
    """``n`` sequential requests without cookies (the jar is cleared, so stickiness never applies)."""
    seen: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=f"http://{router.spec.listen}", timeout=10, trust_env=False) as client:
        for _ in range(n):
            resp = await client.get("/")
            client.cookies.clear()
            assert resp.status_code == 200
            seen[resp.headers["X-Version"]] += 1
    return seen


async def test_weights_split_traffic_and_read_back(haproxy, apps) -> None:
    router, _ = haproxy
    v1, v2 = apps
    for w1, w2 in ((100, 0), (0, 100)):
        routes = split(v1, w1, v2, w2)
        await router.set_routes(SERVICE, routes)
        assert await router.get_routes(SERVICE) == routes
        seen = await count_versions(router, 30)
        assert seen == Counter({"1.0.0" if w1 else "2.0.0": 30})
    routes = split(v1, 75, v2, 25)
    await router.set_routes(SERVICE, routes)
    assert await router.get_routes(SERVICE) == routes
    seen = await count_versions(router, 300)
    assert 45 <= seen["2.0.0"] <= 105, seen
    assert seen["1.0.0"] + seen["2.0.0"] == 300


async def test_routes_survive_a_reload(haproxy, apps) -> None:
    router, proc = haproxy
    v1, v2 = apps
    routes = split(v1, 75, v2, 25)
    await router.set_routes(SERVICE, routes)
    await router.save_server_state()
    old = proc.pid
    assert proc.reload() != old
    assert await router.get_routes(SERVICE) == routes
    assert set(await count_versions(router, 20)) == {"1.0.0", "2.0.0"}

    # A reload without the saved server state loses the runtime changes; the state file brings them back.
    server_state_path(router.config_file).unlink()
    proc.reload()
    assert (await router.get_routes(SERVICE)).weights() == {"2.0.0": 0, "1.0.0": 0}
    await router.reapply(SERVICE)
    assert await router.get_routes(SERVICE) == routes


async def test_a_removed_server_drains_its_inflight_request(haproxy, apps) -> None:
    router, _ = haproxy
    v1, _ = apps
    slow = DemoApp("2.0.0", faults="2.0.0:latency=1").start()
    try:
        await router.set_routes(SERVICE, Routes((VersionRoute("2.0.0", 100, (slow.backend,)),)))
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            pending = asyncio.create_task(client.get(f"http://{router.spec.listen}/"))
            await eventually(lambda: router.inflight(SERVICE, slow.backend), what="the slow request in flight")
            await router.set_routes(SERVICE, Routes((VersionRoute("1.0.0", 100, (v1.backend,)),
                                                     VersionRoute("2.0.0", 0, ()))))
            assert (await router.get_routes(SERVICE)).weights() == {"1.0.0": 100, "2.0.0": 0}
            assert (await server_at(router, slow.backend)).admin & 0x08  # drain: no new request, the old one goes on
            assert (await count_versions(router, 10)) == Counter({"1.0.0": 10})
            resp = await pending
            assert resp.status_code == 200 and resp.headers["X-Version"] == "2.0.0"
        await eventually(lambda: _is_zero(router.inflight(SERVICE, slow.backend)), what="inflight back to 0")
        assert (await server_at(router, slow.backend)).maint  # retired once idle
    finally:
        slow.stop()


async def server_at(router: HaproxyRouter, backend: str) -> Server:
    return next(s for s in (await router.servers()).values() if s.backend == backend)


async def _is_zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def test_no_request_fails_while_routes_change(haproxy, apps) -> None:
    router, _ = haproxy
    v1, v2 = apps
    await router.set_routes(SERVICE, split(v1, 100, v2, 0))
    results: Counter[str] = Counter()
    stop = asyncio.Event()

    async def load() -> None:
        async with httpx.AsyncClient(base_url=f"http://{router.spec.listen}", timeout=10,
                                     trust_env=False) as client:
            while not stop.is_set():
                try:
                    resp = await client.get("/")
                    results["ok" if resp.status_code == 200 else f"status {resp.status_code}"] += 1
                except httpx.HTTPError as exc:
                    results[type(exc).__name__] += 1
                client.cookies.clear()

    workers = [asyncio.create_task(load()) for _ in range(4)]
    for w1, w2 in ((95, 5), (50, 50), (0, 100), (10, 90), (100, 0), (0, 100)):
        floor = results["ok"] + 100
        await router.set_routes(SERVICE, split(v1, w1, v2, w2))

        def served(f: int = floor) -> bool:
            return results["ok"] >= f

        await eventually(served, what="traffic after a routing change")
    # Only 2.0.0 left: 1.0.0 leaves the routes (drain, then maint) under load.
    await router.set_routes(SERVICE, Routes((VersionRoute("2.0.0", 100, (v2.backend,)),)))
    floor = results["ok"] + 100
    await eventually(lambda: results["ok"] >= floor, what="traffic after removing 1.0.0")
    stop.set()
    await asyncio.gather(*workers)
    assert set(results) == {"ok"}, results


async def test_a_missing_socket_is_a_one_line_provider_error(tmp_path: Path) -> None:
    router = HaproxyRouter(make_spec(tmp_path, socket=tmp_path / "nowhere.sock"), SERVICE)
    with pytest.raises(ProviderError) as err:
        await router.get_routes(SERVICE)
    message = str(err.value)
    assert "\n" not in message and "nowhere.sock" in message and "stats socket" in message


async def send(router: HaproxyRouter, n: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://{router.spec.listen}", timeout=10, trust_env=False) as c:
        for _ in range(n):
            await c.get("/")
            c.cookies.clear()


def mq(version: str, metric: str, window: float = 10.0) -> MetricQuery:
    return MetricQuery(SERVICE, version, metric, window)


async def test_stats_metrics_count_requests_and_errors_per_version(haproxy, apps) -> None:
    router, _ = haproxy
    v1, _ = apps
    bad = DemoApp("2.0.0", faults="2.0.0:error_rate=1").start()
    try:
        await router.set_routes(SERVICE, Routes((VersionRoute("2.0.0", 50, (bad.backend,)),
                                                 VersionRoute("1.0.0", 50, (v1.backend,)))))
        now = [0.0]
        metrics = HaproxyStatsMetrics(router, clock=lambda: now[0])
        for version in ("1.0.0", "2.0.0"):
            for metric in ("error_rate", "rps"):
                assert await metrics.query(mq(version, metric)) is None  # a baseline only
                assert f"first reading of {version}'s counters" in (metrics.explain(mq(version, metric)) or "")
        await send(router, 40)
        now[0] = 10.0
        assert await metrics.query(mq("1.0.0", "error_rate")) == 0.0
        assert await metrics.query(mq("1.0.0", "rps")) == 2.0
        assert await metrics.query(mq("2.0.0", "error_rate")) == 1.0
        assert await metrics.query(mq("2.0.0", "rps")) == 2.0
        assert await metrics.query(mq("3.0.0", "rps")) == 0.0  # not routed: no requests, a true rate
        assert await metrics.query(mq("3.0.0", "error_rate")) is None
        assert metrics.explain(mq("3.0.0", "error_rate")) == "no traffic to 3.0.0 in the last 10s"
        assert await metrics.query(mq("2.0.0", "latency_p95")) is None  # latency needs the ring reader
        assert metrics.explain(mq("2.0.0", "latency_p95")) == ("this HAProxy metric source was built without its "
                                                               "ring reader")
    finally:
        bad.stop()


async def test_the_whole_step_right_after_the_interval_answers_for_its_own_window(haproxy, apps) -> None:
    """One analysis measures the interval, then the whole step a moment later: both must see the requests."""
    router, _ = haproxy
    v1, v2 = apps
    await router.set_routes(SERVICE, split(v1, 50, v2, 50))
    now = [100.0]
    metrics = HaproxyStatsMetrics(router, clock=lambda: now[0])
    assert await metrics.query(mq("2.0.0", "error_rate")) is None
    await send(router, 40)
    now[0] = 110.0
    assert await metrics.query(mq("2.0.0", "error_rate", 10.0)) == 0.0  # the interval
    now[0] = 110.01
    assert await metrics.query(mq("2.0.0", "error_rate", 600.0)) == 0.0  # the whole step, 10 ms later
    assert await metrics.query(mq("2.0.0", "rps", 600.0)) == pytest.approx(20 / 10.01)
    await send(router, 20)
    now[0] = 120.0
    assert await metrics.query(mq("2.0.0", "rps", 10.0)) == 10 / 10.0  # since the reading at 110
    assert await metrics.query(mq("2.0.0", "rps", 600.0)) == 30 / 20.0  # since the first reading, at 100


async def test_a_version_that_refuses_connections_is_all_errors(haproxy, apps) -> None:
    """HAProxy retries elsewhere (users see 200s from the other version) or answers 503: either way the version
    failed its requests, as a 502 through the built-in router does, and is not "without traffic"."""
    router, _ = haproxy
    v1, _ = apps
    await router.set_routes(SERVICE, Routes((VersionRoute("2.0.0", 50, (f"127.0.0.1:{free_port()}",)),
                                             VersionRoute("1.0.0", 50, (v1.backend,)))))
    now = [0.0]
    metrics = HaproxyStatsMetrics(router, clock=lambda: now[0])
    await metrics.query(mq("2.0.0", "error_rate"))
    await send(router, 20)
    now[0] = 10.0
    assert await metrics.query(mq("2.0.0", "error_rate")) == 1.0


async def test_a_route_change_takes_the_baseline_so_the_first_window_has_data(haproxy, apps) -> None:
    """Through the provider deploy uses, a step's first analysis already measures from the route change: with a
    1-second step the first evaluation is the whole step, and a baseline-only answer would pause it for no data."""
    from releasegate.providers.registry import BaselinedRouter

    router, _ = haproxy
    v1, v2 = apps
    now = [50.0]
    metrics = HaproxyStatsMetrics(router, clock=lambda: now[0])
    routed = BaselinedRouter(router, metrics)
    await routed.set_routes(SERVICE, split(v1, 50, v2, 50))
    assert (await routed.get_routes(SERVICE)).weights() == {"1.0.0": 50, "2.0.0": 50}
    await send(router, 20)
    now[0] = 51.0
    assert await metrics.query(mq("2.0.0", "error_rate", 1.0)) == 0.0  # no "first reading" wait
    assert await metrics.query(mq("1.0.0", "rps", 1.0)) == 10.0
