"""Per-version evidence through a real nginx: the JSON access log the router renders, read by the metric source
the registry builds for ``router: {kind: nginx}``, and a rollout that rolls a failing canary back through it.

Before the access log, nginx measured nothing (every rule had no data), and a green answering 500 to every
request was promoted while about 1,400 requests/s flowed.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from releasegate import service
from releasegate.engine.clock import SystemClock
from releasegate.providers.base import MetricQuery, Routes, VersionRoute
from releasegate.providers.metrics.nginx_log import NginxLogMetrics
from releasegate.providers.metrics.reasons import explain
from releasegate.providers.registry import build_providers
from releasegate.providers.routers.nginx import NginxRouter
from releasegate.spec import load_spec_text
from tests.support.nginx import NGINX, DemoBackend, PrivateNginx, get
from tests.support.rollouts import Load, cleanup, write_spec
from tests.support.router_helpers import free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.skipif(shutil.which(NGINX) is None, reason="nginx is not installed")

SERVICE = "shop"


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[PrivateNginx]:
    proxy = PrivateNginx(tmp_path / "nginx")
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def backends() -> Iterator[tuple[DemoBackend, DemoBackend]]:
    good, bad = DemoBackend("1.0.0"), DemoBackend("2.0.0", faults="2.0.0:error_rate=1")
    try:
        good.start()
        bad.start()
        yield good, bad
    finally:
        good.stop()
        bad.stop()


def router_yaml(nginx: PrivateNginx, extra: str = "") -> str:
    return nginx.router_yaml(f", drain_timeout: 5s, drain_grace: 1s{extra}")


def spec_text(nginx: PrivateNginx, extra: str = "") -> str:
    return (f"service: {SERVICE}\nplatform: {{command: 'true {{port}}'}}\nrouter: {router_yaml(nginx, extra)}\n"
            "analysis: {rules: [{metric: error_rate, max: 5%}, {metric: latency_p95, max: 2s}]}\n")


def q(version: str, metric: str, window: float = 60.0) -> MetricQuery:
    return MetricQuery(SERVICE, version, metric, window)


async def requests(port: int, n: int) -> dict[int, int]:
    """``n`` requests, each on its own connection without a cookie (a new user each time): status -> count."""
    seen: dict[int, int] = {}
    for _ in range(n):
        status = (await asyncio.to_thread(get, port))[0]
        seen[status] = seen.get(status, 0) + 1
    return seen


async def test_nginx_gives_each_version_its_errors_latency_and_rate(nginx, backends, tmp_path: Path) -> None:
    good, bad = backends
    spec = load_spec_text(spec_text(nginx), "shop.yaml")
    providers = await build_providers(spec, tmp_path, tmp_path / "state", SystemClock())
    metrics = providers.metrics
    assert await metrics.query(q("2.0.0", "error_rate")) is None
    assert "has not written its access log" in (explain(metrics, q("2.0.0", "error_rate")) or "")
    await providers.router.set_routes(SERVICE, Routes((VersionRoute("2.0.0", 50, (bad.address,)),
                                                       VersionRoute("1.0.0", 50, (good.address,)))))
    seen = await requests(nginx.listen_port, 120)
    assert seen.get(500, 0) > 10 and seen.get(200, 0) > 10, seen

    log = nginx.conf_dir / "releasegate-shop.access.log"  # the default: next to the file releasegate owns

    def logged() -> bool:  # nginx writes a line once the answer is sent: poll, do not sleep
        return len(log.read_text().splitlines()) == 120

    await eventually(logged, what="nginx to log all 120 requests")
    for version in ("2.0.0", "1.0.0"):
        rps = await metrics.query(q(version, "rps"))
        assert rps is not None and rps > 0
    assert await metrics.query(q("2.0.0", "error_rate")) == 1.0
    assert await metrics.query(q("1.0.0", "error_rate")) == 0.0
    for metric in ("latency_p50", "latency_p95", "latency_p99"):
        value = await metrics.query(q("1.0.0", metric))
        assert value is not None and 0 <= value < 2.0, (metric, value)
    assert await metrics.query(q("3.0.0", "error_rate")) is None
    assert explain(metrics, q("3.0.0", "error_rate")) == "no traffic to 3.0.0 in the last 1m"


async def test_an_unreachable_backend_is_the_versions_502(nginx, backends, tmp_path: Path) -> None:
    good, _ = backends
    spec = load_spec_text(spec_text(nginx), "shop.yaml")
    providers = await build_providers(spec, tmp_path, tmp_path / "state", SystemClock())
    router, metrics = providers.router, providers.metrics
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    await router.set_routes(SERVICE, Routes((VersionRoute("2.0.0", 100, (dead,)),
                                             VersionRoute("1.0.0", 0, (good.address,)))))
    assert await requests(nginx.listen_port, 10) == {502: 10}
    await eventually(lambda: _equals(metrics.query(q("2.0.0", "error_rate")), 1.0), what="ten 502s counted")


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


async def _equals(value: Awaitable[float | None], expected: float) -> bool:
    return await value == expected


async def test_a_big_log_is_rotated_and_nothing_is_lost(nginx, backends, tmp_path: Path) -> None:
    good, _ = backends
    spec = load_spec_text(spec_text(nginx, ", access_log_max_mb: 1"), "shop.yaml")
    router = (await build_providers(spec, tmp_path, tmp_path / "state", SystemClock())).router
    assert isinstance(router, NginxRouter) and router.log_path is not None
    log = router.log_path
    metrics = NginxLogMetrics(log, SERVICE, router)
    await router.set_routes(SERVICE, Routes((VersionRoute("1.0.0", 100, (good.address,)),)))
    await metrics.query(q("1.0.0", "rps"))
    await requests(nginx.listen_port, 5)

    async def counted(n: int) -> bool:
        await metrics.query(q("1.0.0", "rps"))
        return metrics.tail.lines == n

    await eventually(lambda: counted(5), what="5 requests counted")
    await asyncio.to_thread(_append, log, ("x" * 1023 + "\n") * 1100)  # past 1 MiB; lines not ours: skipped
    await metrics.query(q("1.0.0", "rps"))  # reads it, then renames it to .1 and has nginx reopen
    assert log.with_name(log.name + ".1").stat().st_size > 1024 * 1024
    sent = 5

    async def reopened() -> bool:
        """nginx's workers reopen the log when its master gets to the signal, which a busy machine delays:
        requests before that still go to the renamed file (and count), so send one at a time until the new
        file has one."""
        nonlocal sent
        await requests(nginx.listen_port, 1)
        sent += 1
        return log.exists() and log.stat().st_size > 0

    await eventually(reopened, what="nginx to write the reopened log")
    assert sent > 5
    await eventually(lambda: counted(sent), what=f"{sent} requests counted")
    assert metrics.tail.skipped == 1100
    assert await metrics.query(q("1.0.0", "error_rate")) == 0.0


@pytest.mark.slow
async def test_a_canary_failing_every_request_through_nginx_is_rolled_back(nginx, tmp_path: Path) -> None:
    """The reported problem, end to end: the canary answers 500 to everything; it must never be promoted."""
    path = write_spec(tmp_path, nginx.listen_port, "{canary: {steps: [{weight: 50, pause: 2s}]}}",
                      faults="2.0.0:error_rate=1", rules="[{metric: error_rate, max: 0.05, for: 1s}]",
                      rollback="{mode: immediate}", smoke_path="/health")  # smoke passes: only traffic tells
    builtin = f'router: {{listen: "127.0.0.1:{nginx.listen_port}", drain_timeout: 5s}}'
    path.write_text(path.read_text().replace(builtin, f"router: {router_yaml(nginx)}"))
    ctx = service.new_context(tmp_path / "state")
    try:
        st = await asyncio.wait_for(service.deploy(ctx, path, "1.0.0"), 60)
        assert st.status == "promoted", st.reason
        async with Load(f"http://127.0.0.1:{nginx.listen_port}/api/items", concurrency=4) as load:
            await load.wait_for(20)
            st = await asyncio.wait_for(service.deploy(ctx, path, "2.0.0"), 60)
        assert st.status == "rolled_back", st.reason
        assert "error_rate" in (st.reason or ""), st.reason
        assert load.by_version.get("2.0.0", 0) > 0
        assert service.status(ctx, SERVICE)[0]["current"] == "1.0.0"
    finally:
        await cleanup(tmp_path / "state", path)
