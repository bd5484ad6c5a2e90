"""The router process lifecycle and the controller-side client, process helpers and metric source."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from releasegate.errors import ProviderError
from releasegate.providers.base import MetricQuery, Routes, VersionRoute
from releasegate.providers.metrics.builtin import RouterMetrics
from releasegate.providers.metrics.totals import increments
from releasegate.providers.routers.builtin import (
    BuiltinRouterClient,
    admin_token_path,
    ensure_router,
    read_router_state,
    router_paths,
    stop_router,
)
from releasegate.spec.models import BuiltinRouter
from tests.support.router_helpers import KeepAliveBackend, router_args, start_router
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def backend() -> Iterator[KeepAliveBackend]:
    b = KeepAliveBackend("v1").start()
    yield b
    b.stop()


def test_sigterm_exits_cleanly_and_removes_the_state_file(tmp_path: Path) -> None:
    r = start_router(tmp_path)
    assert r.state_file.exists()
    assert r.stop() == 0
    assert not r.state_file.exists()


def test_busy_port_is_a_one_line_error(tmp_path: Path) -> None:
    r = start_router(tmp_path)
    try:
        other = tmp_path / "other"
        other.mkdir()
        done = subprocess.run(router_args(other, "shop", r.listen), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 2
        assert done.stderr.strip() == (f"router: cannot listen on {r.listen}: address already in use "
                                       "(is another router running? see 'releasegate router status')")
    finally:
        r.stop()


def test_corrupt_routes_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "routes.json").write_text('{"versions": [')
    done = subprocess.run(router_args(tmp_path), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "routes.json") in lines[0] and "corrupt" in lines[0]
    assert "Traceback" not in done.stderr


async def test_client_metrics_and_process_helpers(tmp_path: Path, backend: KeepAliveBackend) -> None:
    spec = BuiltinRouter(listen="127.0.0.1:0", sticky="none")
    assert read_router_state(tmp_path, "shop") is None
    client = await ensure_router(tmp_path, "shop", spec)
    try:
        state = read_router_state(tmp_path, "shop")
        assert state is not None and state["admin"] == client.admin
        state_file, routes_file, _ = router_paths(tmp_path, "shop")
        assert state_file.parent == tmp_path.absolute() / "routers"
        again = await ensure_router(tmp_path, "shop", spec)  # already running: no second router
        assert again.admin == client.admin

        routes = Routes((VersionRoute("v2", 0, ()), VersionRoute("v1", 100, (backend.address,))))
        await client.set_routes("shop", routes)
        assert await client.get_routes("shop") == routes
        assert json.loads(routes_file.read_text())["versions"][1]["backends"] == [backend.address]
        assert await client.inflight("shop", backend.address) == 0
        with pytest.raises(ProviderError, match="serves 'shop'"):
            await client.get_routes("other")
        with pytest.raises(ProviderError, match="HTTP 400"):
            await client.set_routes("shop", Routes((VersionRoute("v", 100, ("bad",)),)))

        metrics = RouterMetrics(client)
        q = MetricQuery("shop", "v1", "error_rate", 60)
        assert await metrics.query(q) is None  # no requests: no data, not 0 %
        assert await metrics.query(MetricQuery("shop", "v1", "rps", 60)) == 0.0
        listen = (await client.health())["listen"]
        async with httpx.AsyncClient(trust_env=False) as http:
            for path in ("/", "/", "/", "/status/500"):
                await http.get(f"http://{listen}{path}")
        assert await metrics.query(q) == pytest.approx(0.25)
        first = await metrics.totals()  # a judge's look: totals since each version's first request
        assert first.versions["v1"]["requests"] == 4 and first.versions["v1"]["errors"] == 1
        assert sum(first.versions["v1"]["hist"].values()) == 4
        assert first.versions["v2"] == {"requests": 0, "errors": 0, "hist": {}}  # routed, never asked
        async with httpx.AsyncClient(trust_env=False) as http:
            for path in ("/", "/status/503"):
                await http.get(f"http://{listen}{path}")
        second = await metrics.totals()
        assert second.epoch == first.epoch  # the same router process: the counts go on
        new = increments(first, second)["v1"]
        assert (new["requests"], new["errors"], sum(new["hist"].values())) == (2, 1, 2)  # only what came since
        p95 = await metrics.query(MetricQuery("shop", "v1", "latency_p95", 60))
        assert p95 is not None and 0 < p95 < 5
        rps = await metrics.query(MetricQuery("shop", "v1", "rps", 60))
        assert rps is not None and rps > 0
        assert await metrics.query(MetricQuery("shop", "v1", "cpu", 60)) is None
        assert await metrics.query(MetricQuery("shop", "v2", "latency_p50", 60)) is None
    finally:
        await client.aclose()
        assert stop_router(tmp_path, "shop", timeout=10) is True
    assert read_router_state(tmp_path, "shop") is None
    assert stop_router(tmp_path, "shop", timeout=1) is False
    dead = BuiltinRouterClient(client.admin, timeout=1)
    with pytest.raises(ProviderError, match="unreachable"):
        await dead.health()
    assert await RouterMetrics(dead).query(MetricQuery("shop", "v1", "error_rate", 60)) is None
    await dead.aclose()


async def test_ensure_router_reports_an_early_exit(tmp_path: Path) -> None:
    _, routes_file, _ = router_paths(tmp_path, "shop")
    routes_file.parent.mkdir(parents=True)
    routes_file.write_text("garbage")
    with pytest.raises(ProviderError, match=r"exited at start.*corrupt"):
        await ensure_router(tmp_path, "shop", BuiltinRouter(listen="127.0.0.1:0"))


def test_router_keeps_serving_without_its_parent(tmp_path: Path, backend: KeepAliveBackend) -> None:
    """The controller may die: a router started detached by a short-lived parent serves on."""
    code = ("import asyncio, sys; from pathlib import Path; "
            "from releasegate.providers.routers.builtin import ensure_router; "
            "from releasegate.spec.models import BuiltinRouter; "
            "c = asyncio.run(ensure_router(Path(sys.argv[1]), 'shop', BuiltinRouter(listen='127.0.0.1:0'))); "
            "print(c.admin)")
    admin = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           timeout=30, check=True).stdout.strip()
    try:
        token = admin_token_path(tmp_path, "shop").read_text().strip()
        resp = httpx.put(f"http://{admin}/routes", trust_env=False, headers={"Authorization": f"Bearer {token}"},
                         json={"versions": [{"version": "v1", "weight": 100, "backends": [backend.address]}]})
        listen = httpx.get(f"http://{admin}/health", trust_env=False).json()["listen"]
        assert resp.status_code == 200
        assert wait_until(lambda: httpx.get(f"http://{listen}/", trust_env=False).text == "v1")
    finally:
        assert stop_router(tmp_path, "shop", timeout=10)


def test_sigterm_lets_the_inflight_request_finish(tmp_path: Path, backend: KeepAliveBackend) -> None:
    r = start_router(tmp_path)
    r.put_routes([{"version": "v1", "weight": 100, "backends": [backend.address]}])
    result: dict[str, object] = {}

    def slow() -> None:
        with httpx.Client(trust_env=False, timeout=10) as c:
            resp = c.get(r.url + "/gate")
            result.update(status=resp.status_code, body=resp.text)

    t = threading.Thread(target=slow)
    t.start()
    wait_until(lambda: r.admin_get("/routes")["inflight"].get(backend.address) == 1, what="the request in flight")
    r.proc.send_signal(signal.SIGTERM)
    host, port = r.listen.rsplit(":", 1)

    def refused() -> bool:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            return True
        return False

    wait_until(refused, what="the router to stop accepting")
    backend.release()
    t.join(10)
    assert result == {"status": 200, "body": "v1"}
    assert r.proc.wait(10) == 0
    assert not r.state_file.exists()
