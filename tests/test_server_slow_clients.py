"""Slow, stuck and oversized clients over raw sockets against a real server: none of them stalls anyone else.

The server runs with ``--request-timeout 1`` so the deadlines show within the test; each check waits on the
socket (the server closing it or answering), never on a clock.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator

import pytest

from tests.support.server import ServerProc

HEAD_TIMEOUT = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    base = tmp_path_factory.mktemp("slow")
    proc = ServerProc(base / "state", base, extra=("--request-timeout", str(HEAD_TIMEOUT))).start()
    yield proc
    proc.stop()


def _open(server: ServerProc) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 30 s pass: the test then fails)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, read as it comes (the server may reset the connection after it,
    as a client that keeps sending a refused body is answered and closed)."""
    got = b""
    while True:
        head, sep, body = got.partition(b"\r\n\r\n")
        if sep:
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            if len(body) >= length:
                return got
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise AssertionError(f"the connection ended before a whole response: {got[:300]!r}")
        got += chunk


def _others_are_served(server: ServerProc, token: str) -> None:
    with server.client(token) as c:
        assert c.get("/healthz").status_code == 200
        assert c.post("/api/v1/specs/validate", json={"spec_yaml": "service: shop\n"}).status_code == 200


def test_a_trickling_head_does_not_stall_others_and_is_cut_off(server):
    token = server.token("vera", "viewer")
    head = f"POST /api/v1/specs/validate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n".encode()
    stalled = [_open(server) for _ in range(50)]  # connected, nothing sent
    trickling = _open(server)
    try:
        for byte in head[:20]:  # a byte, then everyone else's requests, then the next byte ...
            try:
                trickling.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break  # ... until the head's deadline closes it
            _others_are_served(server, token)
        else:
            assert _answer(trickling) == b""  # closed without an answer: its head never completed
        for sock in stalled:
            assert _answer(sock) == b""
    finally:
        for sock in (*stalled, trickling):
            sock.close()
    _others_are_served(server, token)
    assert "no complete request head within 1 s" in server.log.read_text()


def test_a_body_that_stops_coming_gets_408_and_others_are_served_meanwhile(server):
    token = server.token("vera", "viewer")
    sock = _open(server)
    try:
        sock.sendall(f"POST /api/v1/specs/validate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"spec_y".encode())
        _others_are_served(server, token)
        answer = _answer(sock)
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["detail"] == f"the request body did not arrive within {HEAD_TIMEOUT} s"


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_gets_413_problem_json_before_it_is_all_sent(server, chunked):
    token = server.token("dora", "deployer")
    sock = _open(server)
    size = 2 << 20
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    try:
        sock.sendall(f"POST /api/v1/rollouts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Type: application/json\r\nConnection: close\r\n{framing}\r\n\r\n".encode())
        if chunked:  # past the limit in 64 KiB chunks, until the answer comes
            piece = b"x" * (64 << 10)
            for _ in range(size // len(piece) + 1):
                if select.select([sock], [], [], 0)[0]:
                    break
                try:
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    break
        answer = _response(sock)
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 413
    _others_are_served(server, server.token("vera", "viewer"))
