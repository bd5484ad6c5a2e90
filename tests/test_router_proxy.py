"""The built-in router as a real process in front of real backends, on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.router_helpers import (
    KeepAliveBackend,
    Proc,
    RouterProc,
    raw_request,
    start_http_server,
    start_router,
)
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[KeepAliveBackend, KeepAliveBackend]]:
    a, b = KeepAliveBackend("v1").start(), KeepAliveBackend("v2").start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def http10(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("www")
    (root / "hello.txt").write_bytes(b"hello from http.server\n" * 1000)
    proc = start_http_server(root)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterProc]:
    r = start_router(tmp_path_factory.mktemp("router"))
    yield r
    assert r.stop() == 0


def routes(*versions: tuple[str, int, list[str]]) -> list[dict[str, object]]:
    return [{"version": v, "weight": w, "backends": bs} for v, w, bs in versions]


def put(router: RouterProc, *versions: tuple[str, int, list[str]]) -> dict[str, object]:
    resp = router.put_routes(routes(*versions))
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10)


def test_get_and_post_bodies_are_proxied(router: RouterProc, backends: tuple[KeepAliveBackend, ...]) -> None:
    a, _ = backends
    put(router, ("v1", 100, [a.address]))
    with client() as c:
        r = c.get(router.url + "/hello", headers={"Host": "shop.example"})
        assert (r.status_code, r.text, r.headers["x-backend"]) == (200, "v1", "v1")
        seen = a.headers_seen[-1]
        assert seen["host"] == "shop.example"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        big = os.urandom(3 << 20)  # larger than every socket buffer: exercises flow control both ways
        r = c.post(router.url + "/echo", content=big)
        assert r.status_code == 200 and r.content == big

        def gen() -> Iterator[bytes]:
            for i in range(50):
                yield bytes([i]) * 1000

        r = c.post(router.url + "/echo", content=gen())  # a generator body goes out chunked
        assert r.status_code == 200 and r.content == b"".join(gen())
        assert a.headers_seen[-1].get("transfer-encoding") == "chunked"
        r = c.get(router.url + "/chunked")
        assert r.text == "part1-v1-end"
        assert c.head(router.url + "/").status_code == 200
        assert c.get(router.url + "/status/204").status_code == 204
        assert c.get(router.url + "/status/500").status_code == 500
        assert c.get(router.url + "/after").text == "v1"  # the keep-alive connection is still in step


def test_http10_backends(router: RouterProc, http10: Proc, backends: tuple[KeepAliveBackend, ...]) -> None:
    put(router, ("static", 100, [http10.address]))
    expected = b"hello from http.server\n" * 1000
    with client() as c:
        for _ in range(3):  # http.server closes after each response: a new backend connection every time
            r = c.get(router.url + "/hello.txt")
            assert r.status_code == 200 and r.content == expected
            assert r.http_version == "HTTP/1.1" and r.headers.get("connection") != "close"  # kept open
        assert c.get(router.url + "/missing").status_code == 404
    a, _ = backends
    put(router, ("v1", 100, [a.address]))
    with client() as c:
        r = c.get(router.url + "/eof")  # no length: the body ends with the backend's connection
        assert r.status_code == 200 and r.content == b"eof-" * 5000
        assert r.headers["connection"] == "close"
        assert c.get(router.url + "/").text == "v1"  # httpx reconnects, the router serves on
    out = raw_request(router.listen, b"GET /eof HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.endswith(b"eof-" * 5000)  # and the router closed the client connection too


def test_http10_client_and_pipelining(router: RouterProc, backends: tuple[KeepAliveBackend, ...]) -> None:
    a, _ = backends
    put(router, ("v1", 100, [a.address]))
    out = raw_request(router.listen, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\nv1")
    two = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out = raw_request(router.listen, two)
    assert out.count(b"HTTP/1.1 200") == 2 and out.endswith(b"v1")


def test_malformed_and_oversized_requests(router: RouterProc, backends: tuple[KeepAliveBackend, ...]) -> None:
    a, _ = backends
    put(router, ("v1", 100, [a.address]))
    assert raw_request(router.listen, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"
    assert raw_request(router.listen, huge).startswith(b"HTTP/1.1 431")
    both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert raw_request(router.listen, both).startswith(b"HTTP/1.1 400")


def split(router: RouterProc, n: int, cookies: bool = False) -> Counter[str]:
    seen: Counter[str] = Counter()
    with client() as c:
        for _ in range(n):
            if not cookies:
                c.cookies.clear()
            seen[c.get(router.url + "/").text] += 1
    return seen


def test_weighted_split(router: RouterProc, backends: tuple[KeepAliveBackend, ...]) -> None:
    a, b = backends
    put(router, ("v2", 0, [b.address]), ("v1", 100, [a.address]))
    assert split(router, 50) == Counter({"v1": 50})
    put(router, ("v2", 100, [b.address]), ("v1", 0, [a.address]))
    assert split(router, 50) == Counter({"v2": 50})
    put(router, ("v2", 20, [b.address]), ("v1", 80, [a.address]))
    seen = split(router, 500)
    assert 50 <= seen["v2"] <= 150, seen  # expected 100; sd is about 9
    put(router, ("v2", 10, [b.address]), ("v1", 10, [a.address]))  # sums below 100 are normalised
    seen = split(router, 300)
    assert 100 <= seen["v2"] <= 200, seen


def test_sticky_cookie_stays_on_canary_as_it_grows(router: RouterProc, backends: tuple[KeepAliveBackend, ...]
                                                    ) -> None:
    a, b = backends
    put(router, ("v2", 20, [b.address]), ("v1", 80, [a.address]))
    with client() as c:
        r = c.get(router.url + "/")
        set_cookie = r.headers["set-cookie"]
        assert set_cookie.startswith("rg_bucket=") and "Max-Age=86400" in set_cookie
        assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
        first = r.text
        assert {c.get(router.url + "/").text for _ in range(30)} == {first}
    # Users whose bucket is in the canary's range stay on it at 20 % -> 50 %.
    bucket_on_canary = [b_ for b_ in range(100) if b_ < 20]
    for bucket in bucket_on_canary[::5]:
        with client() as c:
            c.cookies.set("rg_bucket", str(bucket))
            for weight in (20, 35, 50):
                put(router, ("v2", weight, [b.address]), ("v1", 100 - weight, [a.address]))
                r = c.get(router.url + "/")
                assert r.text == "v2" and "set-cookie" not in r.headers
    with client() as c:
        c.cookies.set("rg_bucket", "99")
        assert c.get(router.url + "/").text == "v1"
    # One version only: no cookie is handed out.
    put(router, ("v1", 100, [a.address]))
    with client() as c:
        assert "set-cookie" not in c.get(router.url + "/").headers


def test_unreachable_backend_is_a_502_counted_for_its_version(router: RouterProc) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: connection refused
        put(router, ("broken", 100, [dead]))
        with client() as c:
            for _ in range(3):
                r = c.get(router.url + "/")
                assert r.status_code == 502 and "cannot connect" in r.text
    stats = router.admin_get("/stats?window=60&version=broken")["broken"]
    assert stats["requests"] >= 3 and stats["errors"] == stats["requests"]
    assert stats["error_rate"] == 1.0
    metrics = httpx.get(f"http://{router.admin}/metrics", trust_env=False).text.splitlines()
    assert f'http_requests_total{{service="shop",version="broken",status="502"}} {stats["requests"]}' in metrics


def test_stats_per_version(router: RouterProc, backends: tuple[KeepAliveBackend, ...]) -> None:
    a, b = backends
    put(router, ("v2", 50, [b.address]), ("v1", 50, [a.address]))
    before = router.admin_get("/stats?window=3600")
    with client() as c:
        for i in range(40):
            c.cookies.clear()
            c.get(router.url + ("/status/503" if i % 4 == 0 else "/"))
    after = router.admin_get("/stats?window=3600")
    got = {v: after[v]["requests"] - before.get(v, {}).get("requests", 0) for v in ("v1", "v2")}
    errors = sum(after[v]["errors"] - before.get(v, {}).get("errors", 0) for v in ("v1", "v2"))
    assert sum(got.values()) == 40 and errors == 10
    for v in ("v1", "v2"):
        s = after[v]
        assert s["latency_p50"] is not None
        assert 0 < s["latency_p50"] <= s["latency_p95"] <= s["latency_p99"] < 5
        assert s["rps"] > 0 and 0 <= s["error_rate"] <= 1
    bad = router.admin_get("/stats?window=0")
    assert bad == {"error": "window must be a positive number of seconds, got '0'"}


def test_admin_validation_changes_nothing(router: RouterProc, backends: tuple[KeepAliveBackend, ...]) -> None:
    a, _ = backends
    applied = put(router, ("v1", 100, [a.address]))
    bad = [
        {"versions": [{"version": "v1", "weight": 101, "backends": [a.address]}]},
        {"versions": [{"version": "v1", "weight": 60}, {"version": "v2", "weight": 60}]},
        {"versions": [{"version": "", "weight": 1}]},
        {"versions": [{"version": "v1", "weight": 1, "backends": ["nocolon"]}]},
        {"nothing": True},
    ]
    for body in bad:
        r = httpx.put(f"http://{router.admin}/routes", json=body, headers=router.auth(), trust_env=False)
        assert r.status_code == 400 and "invalid routes" in r.json()["error"]
    r = httpx.put(f"http://{router.admin}/routes", content=b"{not json", headers=router.auth(), trust_env=False)
    assert r.status_code == 400
    r = httpx.put(f"http://{router.admin}/routes", json={"service": "other", "versions": []}, headers=router.auth(),
                  trust_env=False)
    assert r.status_code == 409
    now = router.admin_get("/routes")
    assert now["versions"] == applied["versions"] and now["generation"] == applied["generation"]
    assert json.loads(router.routes_file.read_text())["generation"] == applied["generation"]
    assert httpx.get(f"http://{router.admin}/nope", headers=router.auth(), trust_env=False).status_code == 404
    health = router.admin_get("/health")
    assert health["ok"] is True and health["service"] == "shop" and health["listen"] == router.listen


def test_no_routes_is_503(router: RouterProc, backends: tuple[KeepAliveBackend, ...]) -> None:
    a, _ = backends
    put(router, ("v1", 0, [a.address]))
    with client() as c:
        assert c.get(router.url + "/").status_code == 503
    put(router, ("v1", 100, []))
    with client() as c:
        assert c.get(router.url + "/").status_code == 503


def test_inflight_request_survives_weight_change_and_removed_backend_drains(
        router: RouterProc, tmp_path: Path) -> None:
    old, new = KeepAliveBackend("old").start(), KeepAliveBackend("new").start()
    try:
        put(router, ("new", 0, [new.address]), ("old", 100, [old.address]))
        with client() as c:
            c.get(router.url + "/warm")  # leaves an idle pooled connection to "old"
        result: dict[str, object] = {}

        def slow() -> None:
            with client() as c:
                r = c.get(router.url + "/gate")
                result.update(status=r.status_code, body=r.text)

        t = threading.Thread(target=slow)
        t.start()
        wait_until(lambda: router.admin_get("/routes")["inflight"].get(old.address) == 1, what="inflight 1")
        with client() as c:
            assert c.get(router.url + "/warm").text == "old"  # a second connection, idle in the pool after
        assert old.open_conns == 2
        put(router, ("new", 100, [new.address]))  # "old" leaves the routes with a request in flight
        wait_until(lambda: old.open_conns == 1, what="the idle pooled connection to the removed backend to close")
        hits_before = old.total()
        with client() as c:
            assert {c.get(router.url + "/").text for _ in range(20)} == {"new"}
        assert old.total() == hits_before  # no new request reached the removed backend
        assert router.admin_get("/routes")["inflight"][old.address] == 1  # still visible while draining
        old.release()
        t.join(10)
        assert result == {"status": 200, "body": "old"}
        wait_until(lambda: old.address not in router.admin_get("/routes")["inflight"], what="drained")
        wait_until(lambda: old.open_conns == 0, what="the drained connection closed")
    finally:
        old.stop()
        new.stop()


def test_dead_pooled_connection_is_retried_once(router: RouterProc) -> None:
    flaky = KeepAliveBackend("flaky").start()
    try:
        put(router, ("v1", 100, [flaky.address]))
        with client() as c:
            assert c.get(router.url + "/drop-next").status_code == 200
            r = c.get(router.url + "/")  # the pooled connection dies on it: resent on a fresh one
            assert (r.status_code, r.text) == (200, "flaky")
        assert flaky.hits["dropped"] == 1
    finally:
        flaky.stop()


def test_restart_serves_persisted_routes_and_header_stickiness(
        tmp_path: Path, backends: tuple[KeepAliveBackend, ...]) -> None:
    a, b = backends
    r = start_router(tmp_path, "--sticky", "header", "--sticky-header", "X-User", "--response-timeout", "1")
    try:
        put(r, ("v2", 50, [b.address]), ("v1", 50, [a.address]))
        users = {}
        with client() as c:
            for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
                got = {c.get(r.url + "/", headers={"X-User": user}).text for _ in range(5)}
                assert len(got) == 1, (user, got)
                users[user] = got.pop()
                assert "set-cookie" not in c.get(r.url + "/", headers={"X-User": user}).headers
            expected = hashlib.sha256(b"x").hexdigest()  # touch: /echo answers the sha of what it got
            assert c.post(r.url + "/echo", content=b"x").headers["x-body-sha"] == expected
            assert c.get(r.url + "/gate").status_code == 504  # response timeout of 1 s
        r.kill9()
        r = start_router(tmp_path, "--sticky", "header", "--sticky-header", "X-User", listen=r.listen)
        first = r.admin_get("/routes")["versions"][0]
        assert first == {"version": "v2", "weight": 50, "backends": [b.address]}
        with client() as c:
            for user, version in users.items():
                assert c.get(r.url + "/", headers={"X-User": user}).text == version
    finally:
        a.release()
        r.stop()
