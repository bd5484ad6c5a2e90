"""The built-in router under slow, broken and hostile clients: a real router process, raw sockets on 127.0.0.1.

Each case checks what a user would see: the status the router answers, that it closes the connection, that the
backend never got the request, and that other users keep being served.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.router_helpers import KeepAliveBackend, RouterProc, raw_request, start_router
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

GET = b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"


@pytest.fixture()
def backend() -> Iterator[KeepAliveBackend]:
    b = KeepAliveBackend("v1").start()
    yield b
    b.stop()


def serve(router: RouterProc, backend: KeepAliveBackend) -> None:
    resp = router.put_routes([{"version": "v1", "weight": 100, "backends": [backend.address]}])
    assert resp.status_code == 200, resp.text


@pytest.fixture()
def router(tmp_path: Path, backend: KeepAliveBackend) -> Iterator[RouterProc]:
    r = start_router(tmp_path, "--header-timeout", "1", "--body-timeout", "1")
    serve(r, backend)
    yield r
    assert r.stop() == 0


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def connect(router: RouterProc) -> socket.socket:
    host, port = router.listen.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the router sends until it closes; a router that holds the connection fails by timeout."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- timeouts -----------------------------------------------------------------------------------------------


def test_a_partial_request_head_gets_408_after_the_header_timeout(router: RouterProc,
                                                                  backend: KeepAliveBackend) -> None:
    with connect(router) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: shop\r\nX-Slow: ")
        answer = read_to_close(slow)
    assert status(answer) == 408
    assert backend.total() == 0
    assert status(raw_request(router.listen, GET)) == 200  # the router still serves everyone else


def test_a_silent_connection_is_closed_after_the_header_timeout(router: RouterProc) -> None:
    with connect(router) as silent:
        assert read_to_close(silent) == b""  # nothing was asked, so nothing is answered: closed well before 75 s


def test_a_stalled_request_body_gets_408_after_the_body_timeout(router: RouterProc,
                                                                backend: KeepAliveBackend) -> None:
    with connect(router) as slow:
        slow.sendall(b"POST /echo HTTP/1.1\r\nHost: shop\r\nContent-Length: 10\r\n\r\nabc")
        answer = read_to_close(slow)
    assert status(answer) == 408
    assert backend.hits["/echo"] == 0
    assert status(raw_request(router.listen, GET)) == 200


def test_partial_heads_at_the_fd_limit_do_not_shut_users_out(tmp_path: Path, backend: KeepAliveBackend) -> None:
    """300 slow heads against a router allowed 256 fds: it sheds the oldest (408) and keeps serving users."""
    r = start_router(tmp_path, "--header-timeout", "30", max_fds=256)
    serve(r, backend)
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            s = connect(r)
            s.sendall(b"GET / HTTP/1.1\r\nHost: shop\r\nX-Slow: ")
            slow.append(s)
        for _ in range(3):
            assert status(raw_request(r.listen, GET)) == 200
        assert status(read_to_close(slow[0])) == 408  # the oldest slow head made room
        assert r.proc.poll() is None
        assert open_fds(r.proc.pid) < 256
    finally:
        for s in slow:
            s.close()
    assert r.stop() == 0


# --- the backend connection pool ------------------------------------------------------------------------------


def burst(router: RouterProc, backend: KeepAliveBackend, n: int) -> None:
    """``n`` requests held at the backend at once, so the router opens ``n`` backend connections."""
    gate = b"GET /gate HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(raw_request, router.listen, gate) for _ in range(n)]
        wait_until(lambda: backend.hits["/gate"] == n, what=f"{n} requests at the backend")
        backend.release()
        assert [status(f.result()) for f in futures] == [200] * n


def test_the_idle_backend_pool_is_capped_per_backend(tmp_path: Path, backend: KeepAliveBackend) -> None:
    r = start_router(tmp_path)
    serve(r, backend)
    burst(r, backend, 72)
    wait_until(lambda: backend.open_conns == 64, what="the router to keep only 64 idle backend connections")
    assert r.stop() == 0


def test_idle_backend_connections_are_closed_after_the_idle_timeout(tmp_path: Path,
                                                                   backend: KeepAliveBackend) -> None:
    r = start_router(tmp_path, "--backend-idle-timeout", "1")
    serve(r, backend)
    at_rest = open_fds(r.proc.pid)
    burst(r, backend, 20)
    wait_until(lambda: backend.open_conns == 0, what="the idle backend connections to be closed")
    wait_until(lambda: open_fds(r.proc.pid) <= at_rest, what="the router's fds back to where they were")
    assert status(raw_request(r.listen, GET)) == 200
    assert r.stop() == 0


# --- strict parsing (RFC 9112, as nginx and HAProxy do it) ----------------------------------------------------

MALFORMED = {
    "space before colon": (b"GET / HTTP/1.1\r\nHost : shop\r\n\r\n", 400),
    "tab before colon": (b"GET / HTTP/1.1\r\nHost: shop\r\nX-A\t: 1\r\n\r\n", 400),
    "unknown transfer coding": (b"POST / HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    "chunked not alone": (b"POST / HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: shop\r\nX-A: 1\r\n 2\r\n\r\n", 400),
    "obs-fold with a tab": (b"GET / HTTP/1.1\r\nHost: shop\r\nX-A: 1\r\n\t2\r\n\r\n", 400),
    "NUL in a header": (b"GET / HTTP/1.1\r\nHost: shop\r\nX-A: 1\x002\r\n\r\n", 400),
    "bare CR in a header": (b"GET / HTTP/1.1\r\nHost: shop\r\nX-A: 1\r2\r\n\r\n", 400),
    "chunk size overflow": (b"POST /echo HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"1ffffffffffffffffffff\r\nx\r\n0\r\n\r\n", 400),
    "bare-LF head": (b"GET / HTTP/1.1\nHost: shop\n\n", 400),
    "CONNECT": (b"CONNECT shop:443 HTTP/1.1\r\nHost: shop:443\r\n\r\n", 405),
    "HTTP/1.1 without Host": (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: shop\r\nHost: other\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_is_refused_and_never_reaches_the_backend(case: str, router: RouterProc,
                                                                     backend: KeepAliveBackend) -> None:
    request, expected = MALFORMED[case]
    answer = raw_request(router.listen, request)  # returns only once the router has closed the connection
    assert status(answer) == expected, answer
    assert answer.count(b"X-Releasegate-Router: 1") == 1  # one answer, then closed
    assert backend.total() == 0


def test_an_http10_request_without_host_is_still_served(router: RouterProc) -> None:
    assert b"v1" in raw_request(router.listen, b"GET / HTTP/1.0\r\n\r\n")


def test_a_tab_inside_a_header_value_is_still_served(router: RouterProc) -> None:
    assert b"v1" in raw_request(router.listen, b"GET / HTTP/1.1\r\nHost: shop\r\nX-A: 1\t2 :3\r\n"
                                b"Connection: close\r\n\r\n")


# --- protocol upgrades (WebSocket) ----------------------------------------------------------------------------


class UpgradeEchoBackend:
    """Answers an Upgrade request with 101, then echoes bytes; records the heads it got."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.heads: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.server.accept()
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            self.heads.append(head)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            while data := conn.recv(4096):
                conn.sendall(data)

    def stop(self) -> None:
        self.server.close()


def test_a_websocket_upgrade_is_tunnelled_to_the_backend_and_counted(tmp_path: Path) -> None:
    echo = UpgradeEchoBackend()
    r = start_router(tmp_path)
    try:
        both = [{"version": v, "weight": 50, "backends": [echo.address]} for v in ("v1", "v2")]
        assert r.put_routes(both).status_code == 200
        with connect(r) as ws:
            ws.sendall(b"GET /chat HTTP/1.1\r\nHost: shop\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += ws.recv(4096)
            assert status(head) == 101
            assert b"Set-Cookie: rg_bucket=" in head  # sticky like any request
            for message in (b"ping", b"x" * 100_000):
                ws.sendall(message)
                got = b""
                while len(got) < len(message):
                    got += ws.recv(65536)
                assert got == message
        assert b"upgrade: websocket" in echo.heads[0].lower()
        assert b"connection: upgrade" in echo.heads[0].lower()
        stats = r.admin_get("/stats?window=60")
        assert stats["v1"]["requests"] + stats["v2"]["requests"] == 1
        assert r.stop() == 0
    finally:
        echo.stop()
