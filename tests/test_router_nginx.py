"""The nginx router against a real, private nginx (loopback only) and two demo backends.

Synchronisation is by polling with deadlines; the only bounds on counts are loose statistical ones.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate.errors import ProviderError
from releasegate.providers.base import Routes, VersionRoute
from releasegate.providers.routers.nginx import GENERATION_PATH, NginxRouter, bucket_table, parse, render
from releasegate.spec.routers_nginx import NginxRouter as NginxRouterSpec
from tests.support.nginx import NGINX, DemoBackend, PrivateNginx, get

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed")

SERVICE = "shop"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateNginx, DemoBackend, DemoBackend]]:
    nginx = PrivateNginx(tmp_path_factory.mktemp("nginx"))
    v1, v2 = DemoBackend("1.0.0"), DemoBackend("2.0.0")
    try:
        v1.start()
        v2.start()
        nginx.start()
        yield nginx, v1, v2
    finally:
        nginx.stop()
        v1.stop()
        v2.stop()


def make_spec(nginx: PrivateNginx, **extra: object) -> NginxRouterSpec:
    return NginxRouterSpec.model_validate({
        "kind": "nginx", "listen": f"127.0.0.1:{nginx.listen_port}",
        "config_file": str(nginx.conf_dir / "releasegate-{service}.conf"), "nginx": NGINX,
        "prefix": str(nginx.root), "pid_file": str(nginx.root / "nginx.pid"),
        "main_config": str(nginx.main_config), "drain_grace": "5s", **extra})


@pytest.fixture
def router(world: tuple[PrivateNginx, DemoBackend, DemoBackend], tmp_path: Path) -> NginxRouter:
    return NginxRouter(make_spec(world[0]), tmp_path, SERVICE)


def routes(v1: DemoBackend, v2: DemoBackend, w2: int, w1: int) -> Routes:
    return Routes((VersionRoute("2.0.0", w2, (v2.address,)), VersionRoute("1.0.0", w1, (v1.address,))))


def versions_seen(port: int, n: int, cookie: str | None = None) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        status, headers = get(port, cookie=cookie)
        seen[headers.get("x-version", f"status {status}")] += 1
    return seen


async def test_all_or_nothing_routes_are_exact(world, router: NginxRouter) -> None:
    nginx, v1, v2 = world
    await router.set_routes(SERVICE, routes(v1, v2, 0, 100))
    assert await asyncio.to_thread(versions_seen, nginx.listen_port, 40) == {"1.0.0": 40}
    await router.set_routes(SERVICE, routes(v1, v2, 100, 0))
    assert await asyncio.to_thread(versions_seen, nginx.listen_port, 40) == {"2.0.0": 40}


async def test_a_30_70_split_without_cookies(world, router: NginxRouter) -> None:
    nginx, v1, v2 = world
    await router.set_routes(SERVICE, routes(v1, v2, 30, 70))
    seen = await asyncio.to_thread(versions_seen, nginx.listen_port, 300)
    assert set(seen) == {"1.0.0", "2.0.0"}
    assert 45 <= seen["2.0.0"] <= 135, seen  # 90 expected; a loose bound, never flaky


async def test_a_cookied_user_stays_on_one_version(world, router: NginxRouter) -> None:
    nginx, v1, v2 = world
    await router.set_routes(SERVICE, routes(v1, v2, 30, 70))
    status, headers = await asyncio.to_thread(get, nginx.listen_port)
    assert status == 200
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie.startswith("rg_bucket=")
    bucket = int(cookie.split("=")[1])
    expected = "2.0.0" if bucket < 30 else "1.0.0"
    assert headers["x-version"] == expected
    assert await asyncio.to_thread(versions_seen, nginx.listen_port, 30, cookie) == {expected: 30}
    # Buckets own fixed ranges in route order: the canary's users at 30 % are still on it at 50 %.
    assert await asyncio.to_thread(versions_seen, nginx.listen_port, 10, "rg_bucket=29") == {"2.0.0": 10}
    assert await asyncio.to_thread(versions_seen, nginx.listen_port, 10, "rg_bucket=30") == {"1.0.0": 10}
    await router.set_routes(SERVICE, routes(v1, v2, 50, 50))
    assert await asyncio.to_thread(versions_seen, nginx.listen_port, 10, "rg_bucket=29") == {"2.0.0": 10}
    status, headers = await asyncio.to_thread(get, nginx.listen_port, "/", "rg_bucket=7")
    assert "set-cookie" not in headers  # a user who has a bucket keeps it


async def test_get_routes_reads_back_what_nginx_serves(world, router: NginxRouter) -> None:
    nginx, v1, v2 = world
    wanted = Routes((VersionRoute("2.0.0", 25, (v2.address,)), VersionRoute("1.0.0", 75, (v1.address,)),
                     VersionRoute("0.9.0", 0, ())))
    await router.set_routes(SERVICE, wanted)
    assert await router.get_routes(SERVICE) == wanted
    assert await NginxRouter(make_spec(nginx), Path("/nonexistent"), SERVICE).get_routes(SERVICE) == wanted


async def test_an_invalid_configuration_changes_nothing(world, router: NginxRouter) -> None:
    nginx, v1, v2 = world
    good = routes(v1, v2, 0, 100)
    await router.set_routes(SERVICE, good)
    before = router.path.read_bytes()
    bad = Routes((VersionRoute("2.0.0", 50, ("127.0.0.1:99999",)), VersionRoute("1.0.0", 50, (v1.address,))))
    message = r'previous file kept: .*\[emerg\].* invalid port in upstream "127.0.0.1:99999"'
    with pytest.raises(ProviderError, match=message):
        await router.set_routes(SERVICE, bad)
    assert router.path.read_bytes() == before
    assert await router.get_routes(SERVICE) == good
    assert await asyncio.to_thread(versions_seen, nginx.listen_port, 20) == {"1.0.0": 20}


async def test_no_live_version_answers_503(world, router: NginxRouter) -> None:
    nginx, v1, v2 = world
    await router.set_routes(SERVICE, routes(v1, v2, 0, 0))
    assert (await asyncio.to_thread(get, nginx.listen_port))[0] == 503
    assert await router.get_routes(SERVICE) == routes(v1, v2, 0, 0)


async def test_reloads_under_load_lose_no_request(world, router: NginxRouter) -> None:
    nginx, v1, v2 = world
    await router.set_routes(SERVICE, routes(v1, v2, 0, 100))
    stop, results = threading.Event(), Counter[int]()

    def load() -> None:
        while not stop.is_set():
            results[get(nginx.listen_port)[0]] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for w2 in (10, 50, 90, 0, 100, 30, 0):
            await router.set_routes(SERVICE, routes(v1, v2, w2, 100 - w2))
    finally:
        stop.set()
        for t in threads:
            await asyncio.to_thread(t.join)
    assert sum(results.values()) > 0
    assert set(results) == {200}, results


def connection_header(port: int) -> str | None:
    """nginx's Connection header for an HTTP/1.1 request that asks for nothing (keep-alive is HTTP/1.1's default)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.getheader("Connection")
    finally:
        conn.close()


@pytest.mark.parametrize(("client_keepalive", "directive", "answer"), [
    (None, "keepalive_timeout 0;", "close"),  # the default: a reload can never close a connection under a request
    ("60s", "keepalive_timeout 60s;", "keep-alive"),
    ("1500ms", "keepalive_timeout 1500ms;", "keep-alive"),  # nginx reads no fractions of a second
])
async def test_client_keepalive_is_off_by_default(world, tmp_path: Path, client_keepalive: str | None,
                                                  directive: str, answer: str) -> None:
    nginx, v1, v2 = world
    extra = {} if client_keepalive is None else {"client_keepalive": client_keepalive}
    router = NginxRouter(make_spec(nginx, **extra), tmp_path, SERVICE)
    assert directive in render(SERVICE, routes(v1, v2, 0, 100), router.spec)
    await router.set_routes(SERVICE, routes(v1, v2, 0, 100))  # nginx -t accepts it, and the reload serves it
    assert router.path.read_text().count("keepalive_timeout") == 1 and directive in router.path.read_text()
    assert await asyncio.to_thread(connection_header, nginx.listen_port) == answer
    assert await router.get_routes(SERVICE) == routes(v1, v2, 0, 100)


async def test_a_removed_backend_counts_as_busy_for_the_drain_grace(world, tmp_path: Path) -> None:
    nginx, v1, v2 = world
    clock = [1000.0]
    router = NginxRouter(make_spec(nginx), tmp_path, SERVICE, now=lambda: clock[0])
    await router.set_routes(SERVICE, routes(v1, v2, 50, 50))
    assert await router.inflight(SERVICE, v2.address) == 1  # routed: nginx cannot say, so never "drained"
    await router.set_routes(SERVICE, Routes((VersionRoute("1.0.0", 100, (v1.address,)),)))
    assert await router.inflight(SERVICE, v2.address) == 1
    clock[0] += 5.1
    assert await router.inflight(SERVICE, v2.address) == 0
    assert await router.inflight(SERVICE, "127.0.0.1:1") == 0


async def test_another_service_is_refused(router: NginxRouter) -> None:
    with pytest.raises(ProviderError, match="serves 'shop', not 'other'"):
        await router.get_routes("other")


def test_the_bucket_table_is_the_builtin_routers() -> None:
    r = Routes((VersionRoute("b", 5, ("h:1",)), VersionRoute("a", 95, ("h:2",))))
    assert bucket_table(r) == [0] * 5 + [1] * 95
    # A weight without backends cannot serve: the others share everything.
    r = Routes((VersionRoute("b", 50, ()), VersionRoute("a", 25, ("h:2",))))
    assert bucket_table(r) == [1] * 100
    assert bucket_table(Routes()) is None


def test_a_hand_edited_file_is_reported(tmp_path: Path) -> None:
    spec = NginxRouterSpec.model_validate({"kind": "nginx", "config_file": str(tmp_path / "x.conf")})
    r = Routes((VersionRoute("b", 30, ("127.0.0.1:1",)), VersionRoute("a", 70, ("127.0.0.1:2",))))
    text = render(SERVICE, r, spec)
    assert parse(text, SERVICE)[0] == r
    with pytest.raises(ProviderError, match="bucket map"):
        parse(text.replace("    0 rg_shop_0;", "    0 rg_shop_1;"), SERVICE)
    with pytest.raises(ProviderError, match="edited by hand"):
        parse(text.replace("server 127.0.0.1:1;", "server 127.0.0.1:3;"), SERVICE)


def test_the_server_block_logs_each_request_with_its_version(tmp_path: Path) -> None:
    spec = NginxRouterSpec.model_validate({"kind": "nginx", "config_file": str(tmp_path / "releasegate-{service}.conf"),
                                           "other_access_logs": ["/var/log/nginx/access.log combined"]})
    r = Routes((VersionRoute("2.0.0", 30, ("127.0.0.1:1",)), VersionRoute("1.0.0", 70, ("127.0.0.1:2",)),
                VersionRoute("0.9.0", 0, ())))
    text = render(SERVICE, r, spec)
    assert 'map $rg_shop_upstream $rg_shop_version {\n    default "";\n    rg_shop_0 "2.0.0";\n' \
           '    rg_shop_1 "1.0.0";\n}' in text
    assert ("log_format rg_shop escape=json "
            """'{"rg":1,"svc":"shop","v":"$rg_shop_version","s":$status,"t":$request_time,"ts":$msec}';""") in text
    assert f'    access_log "{tmp_path}/releasegate-shop.access.log" rg_shop;\n' \
           "    access_log /var/log/nginx/access.log combined;\n" in text
    assert "access_log off;" in text.split(GENERATION_PATH)[1].split("}")[0]  # the read-back is not a request
    off = NginxRouterSpec.model_validate({"kind": "nginx", "access_log": "off"})
    assert "rg_shop_version" not in render(SERVICE, r, off) and "log_format" not in render(SERVICE, r, off)
    with pytest.raises(ProviderError, match="cannot be written into nginx's configuration"):
        render(SERVICE, Routes((VersionRoute('2.0.0";', 100, ("127.0.0.1:1",)),)), spec)


@pytest.mark.parametrize("value", ['/tmp/a";b', "/tmp/$host.log", "/tmp/{x}.log", ""])
def test_an_access_log_path_that_would_change_the_configuration_is_refused(value: str) -> None:
    # a brace is never a literal there; {x} is refused as a placeholder that is not {service}
    refused = r"access_log must be a file path|unknown placeholder \{x\}; known: \{service\} \["
    with pytest.raises(ValueError, match=refused):
        NginxRouterSpec.model_validate({"kind": "nginx", "access_log": value})
