"""The client side of the proxy: one protocol object per user connection, reused for every request on it.

Why asyncio.Protocol and not streams: a stream-based proxy spends a task, a few futures and several buffer
copies per request; here a request that arrives in one segment is parsed with a handful of ``bytes.find``
calls and forwarded with one ``write``. The per-request state lives in slots on this object rather than in new
objects.
"""

from __future__ import annotations

import asyncio
from random import random
from time import perf_counter
from typing import TYPE_CHECKING

from releasegate.router.backend import H_HEAD, BackendConn
from releasegate.router.http1 import (
    HOP_BY_HOP,
    Chunked,
    connection_tokens,
    head_problem,
    header_value,
    simple_response,
    strip_headers,
)
from releasegate.router.routing import Backend, VersionEntry, cookie_bucket, header_bucket
from releasegate.router.upload import P_PENDING, S_BODY, S_CLOSED, S_HEAD, S_TUNNEL, S_WAIT, RequestBody

if TYPE_CHECKING:
    from releasegate.router.core import Core

_XFF_DROP = frozenset(HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto"})
_UPGRADE_KEEP = frozenset({b"connection", b"upgrade"})


class ClientProtocol(RequestBody, asyncio.Protocol):
    __slots__ = ("active", "backend", "core", "http10", "ip", "is_head", "moved", "payload", "seq",
                 "set_cookie", "t0", "t_body", "t_head", "t_idle", "tail", "upgrade", "version",
                 "wpaused")

    def __init__(self, core: Core) -> None:
        self.core = core
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.state = S_HEAD
        self.buf = b""
        self.conn: BackendConn | None = None
        # Valid while ``active``; placeholders until the first request, so the hot path needs no None checks.
        self.backend: Backend = None  # type: ignore[assignment]
        self.version: VersionEntry = None  # type: ignore[assignment]
        self.pending: list[bytes] | None = None
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        self.payload = b""
        self.chunked: Chunked | None = None
        self.body_left = 0
        self.keep = True
        self.http10 = False
        self.is_head = False
        self.set_cookie: bytes | None = None
        self.active = False
        self.retried = False
        self.seq = 0
        self.paused = 0
        self.wpaused = False
        self.t0 = 0.0
        self.t_idle = perf_counter()
        # Timeouts, checked by the once-a-second sweep (core.Core.sweep) so the hot path keeps no timers:
        # t_head is when the wait for the current request head began (0: not waiting), t_body when the body last
        # moved as the sweep saw it, and ``moved`` says body bytes arrived since the last sweep.
        self.t_head = self.t_idle
        self.t_body = 0.0
        self.moved = False
        self.upgrade = False  # this request asks for a protocol upgrade (WebSocket): a 101 opens a tunnel
        self.ip = b""
        self.tail = b""

    # --- asyncio callbacks --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]).encode() if isinstance(peer, tuple) and peer else b"unknown"
        self.tail = b"\r\nX-Forwarded-For: " + self.ip + b"\r\nX-Forwarded-Proto: http\r\n\r\n"
        if not self.core.admit():
            self.state = S_CLOSED
            self.transport.write(simple_response(503, "the router is at its connection limit, try again", False))
            self.transport.close()
            return
        self.core.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = S_CLOSED
        self.core.clients.discard(self)
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abort()  # a half-read response leaves the connection unusable
        if self.active:
            self._account(499)

    def data_received(self, data: bytes) -> None:
        st = self.state
        if st == S_BODY:
            self.moved = True
            pos = self._feed_body(data, 0)
            if pos < len(data) and self.state != S_CLOSED:
                self._hold(data[pos:])
        elif st == S_HEAD:
            if self.buf:
                data = self.buf + data
                self.buf = b""
            else:
                # The common case, inlined: one whole request in one segment.
                end = data.find(b"\r\n\r\n", 0, self.core.max_header_bytes + 4)
                if end >= 0 and end + 4 == len(data):
                    self._request(data, end)
                    return
            self._process(data)
        elif st == S_WAIT:
            self._hold(data)
        elif st == S_TUNNEL and self.conn is not None:
            self.conn.transport.write(data)

    def eof_received(self) -> bool | None:
        # A client that half-closes after its request still wants the response (HTTP/1.0 style).
        self.keep = False
        return True if self.active else None

    def pause_writing(self) -> None:
        self.wpaused = True
        if self.conn is not None:
            self.conn.pause()

    def resume_writing(self) -> None:
        self.wpaused = False
        if self.conn is not None:
            self.conn.resume()

    # --- request side -------------------------------------------------------------------------------------

    def _process(self, data: bytes) -> None:
        max_head = self.core.max_header_bytes
        while data:
            end = data.find(b"\r\n\r\n", 0, max_head + 4)
            if end < 0:
                if len(data) > max_head:
                    self._reject(431, "the request head is larger than the router accepts", close=True)
                elif data.count(b"\n") != data.count(b"\r\n") or data.find(b"\0") >= 0:
                    # A bare-LF head would otherwise be held until the header timeout: answer it now.
                    self._reject(400, "malformed request head (bare LF or NUL)", close=True)
                else:
                    self.buf = data
                    if not self.t_head:
                        self.t_head = perf_counter()
                return
            self.t_head = 0.0
            pos = self._request(data, end)
            if pos < 0 or self.state == S_CLOSED:
                return
            if self.state != S_HEAD:
                if pos < len(data):
                    self._hold(data[pos:])
                return
            data = data[pos:]

    def _request(self, data: bytes, end: int) -> int:
        """Route and forward one request whose head ends at ``end``; returns how far ``data`` was consumed."""
        head = data[:end]
        low = head.lower()
        le = low.find(b"\r\n")
        if le < 0:
            le = end
        # The request line, checked without slicing: METHOD SP TARGET SP HTTP/1.x
        if head.endswith(b" HTTP/1.1", 0, le):
            http10 = False
        elif head.endswith(b" HTTP/1.0", 0, le):
            http10 = True
        else:
            status = 505 if head.find(b" HTTP/", 0, le) > 0 else 400
            return self._reject(status, "malformed request line", close=True)
        sp = head.find(b" ", 0, le)
        if sp <= 0 or head.find(b" ", sp + 1, le) != le - 9:
            return self._reject(400, "malformed request line", close=True)
        problem = head_problem(head, low, le, http10)
        if problem is not None:
            return self._reject(problem[0], problem[1], close=True)
        i = low.find(b"\r\nconnection:", le)
        conn_v: bytes | None = None
        if i >= 0:
            j = low.find(b"\r\n", i + 13)
            conn_v = low[i + 13:j if j >= 0 else end].strip()
            keep = conn_v.find(b"keep-alive") >= 0 if http10 else conn_v.find(b"close") < 0
        else:
            keep = not http10
        chunked = False
        body_left = 0
        # bytes.find, never "in": "x in b" first tries x as an int and builds a TypeError each time.
        if low.find(b"\r\ntransfer-encoding:", le) >= 0:
            te = header_value(low, low, b"\r\ntransfer-encoding:") or b""
            if low.find(b"\r\ncontent-length:") >= 0 or http10:
                return self._reject(400, "unsupported request framing (Transfer-Encoding)", close=True)
            if te != b"chunked" or low.count(b"\r\ntransfer-encoding:") > 1:
                return self._reject(501, "the router supports no Transfer-Encoding but chunked", close=True)
            chunked = True
        else:
            i = low.find(b"\r\ncontent-length:", le)
            if i >= 0:
                j = low.find(b"\r\n", i + 17)
                cl = low[i + 17:j if j >= 0 else end].strip()
                if not cl.isdigit() or len(cl) > 18 or (j >= 0 and low.find(b"\r\ncontent-length:", j) >= 0):
                    return self._reject(400, "invalid Content-Length", close=True)
                body_left = int(cl)
        has_body = chunked or body_left > 0
        self.keep = keep
        core = self.core
        table = core.table
        by_bucket = table.by_bucket
        if by_bucket is None:
            return self._reject(503, f"no routes with weight and backends for service {core.service}",
                                close=has_body or not keep, pos=end + 4)
        # Routing: a bucket per user (cookie or header) or per request.
        self.set_cookie = None
        mode = core.sticky_mode
        if mode == 1:
            i = low.find(b"\r\ncookie:")
            b = cookie_bucket(head, i + 9, core.cookie_eq) if i >= 0 else -1
            if b < 0:
                b = int(random() * 100)
                if table.multi:
                    self.set_cookie = core.cookie_lines[b]
        elif mode == 2:
            hv = header_value(head, low, core.header_key)
            b = header_bucket(hv) if hv else int(random() * 100)
        else:
            b = int(random() * 100)
        version = by_bucket[b]
        bs = version.backends
        backend = bs[0] if len(bs) == 1 else version.pick()
        # Forwarded head: hop-by-hop headers dropped, X-Forwarded-* added. Keep-Alive, TE and Upgrade are only
        # meaningful when named in Connection (RFC 9110 7.6.1), so without Connection most requests need no
        # rewrite. "Connection: keep-alive" may go through as is on an HTTP/1.1 request: it is what we do anyway.
        upgrade = False
        if (conn_v is None or (conn_v == b"keep-alive" and not http10)) and low.find(b"\r\nx-forwarded-") < 0:
            payload = head + self.tail
        else:
            drop = _XFF_DROP | connection_tokens(conn_v) if conn_v else _XFF_DROP
            if b"upgrade" in drop and not http10 and not has_body and low.find(b"\r\nupgrade:") >= 0:
                upgrade = True  # Connection and Upgrade go through: the backend decides on the switch
                drop = drop - _UPGRADE_KEEP
            out, dropped = strip_headers(head, drop)
            prev = dropped.get(b"x-forwarded-for")
            payload = out + (self.tail if prev is None else b"\r\nX-Forwarded-For: " + prev + b", " + self.ip
                             + b"\r\nX-Forwarded-Proto: http\r\n\r\n")
        self.http10 = http10
        self.is_head = head.startswith(b"HEAD ")
        self.upgrade = upgrade
        self.version = version
        self.backend = backend
        backend.inflight += 1
        self.active = True
        self.retried = False
        self.t0 = perf_counter()
        self.payload = payload
        if has_body:
            self.replay = []
            self.replay_size = 0
            self.t_body = self.t0
            self.state = S_BODY
            self.chunked = Chunked() if chunked else None
            self.body_left = body_left
        else:
            self.replay = None
            self.state = S_WAIT
        idle = backend.idle
        conn = None
        while idle:
            c = idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is not None:
            self._attach(conn, True)
        else:
            self.pending = []
            self.seq += 1  # identifies this connection attempt; a late one for an older request is pooled
            core.connect(self, backend, self.seq)
        pos = end + 4
        if has_body and pos < len(data):
            return self._feed_body(data, pos)
        return pos

    def _reject(self, status: int, message: str, *, close: bool, pos: int = -1) -> int:
        """Answer a request the router will not forward; it is no version's request, so it is not counted."""
        keep = self.keep and not close
        self.transport.write(simple_response(status, message, keep))
        if not keep:
            self._close()
            return -1
        self.t_head = 0.0  # answered: the connection is idle again, not late with a head
        self.t_idle = perf_counter()
        return pos

    def _close(self) -> None:
        if self.state != S_CLOSED:
            self.state = S_CLOSED
            self.transport.close()

    # --- backend side callbacks ---------------------------------------------------------------------------

    def attach_new(self, conn: BackendConn, seq: int) -> bool:
        """A fresh connection is ready; False when this request has gone meanwhile (the caller pools it)."""
        if seq != self.seq or not self.active or self.conn is not None or self.state == S_CLOSED:
            return False
        self._attach(conn, False)
        pending = self.pending
        self.pending = None
        if pending:
            write = conn.transport.write
            for part in pending:
                write(part)
            self._resume(P_PENDING)
        return True

    def _attach(self, conn: BackendConn, reused: bool) -> None:
        self.conn = conn
        conn.client = self
        conn.state = H_HEAD  # BackendConn.begin, inlined: this runs once per request
        conn.got = False
        conn.reused = reused
        conn.keep = True
        conn.idle_ticks = 0
        conn.transport.write(self.payload)
        if self.wpaused:
            conn.pause()

    def connect_failed(self, seq: int, status: int, reason: str) -> None:
        if seq == self.seq and self.active and self.conn is None:
            self.fail(status, reason)

    def retry(self) -> bool:
        """Resend on a fresh connection after a pooled one died before answering; once per request."""
        if self.retried or not self.active or self.state == S_CLOSED:
            return False
        self.retried = True
        self.conn = None
        self.pending = list(self.replay) if self.replay else []
        self.seq += 1
        self.core.connect(self, self.backend, self.seq)
        return True

    def fail(self, status: int, reason: str) -> None:
        """No response came from the backend: answer for it; counted as this version's error."""
        self.conn = None
        if self.state == S_CLOSED:
            return
        keep = self.keep and self.state == S_WAIT
        self.keep = keep
        self.transport.write(simple_response(status, reason, keep))
        self.finish(status)

    def abort(self, status: int) -> None:
        """The backend broke off mid-response: the user sees a cut connection, the version an error."""
        self.conn = None
        if self.active:
            self._account(status)
        self._close()

    def _account(self, status: int) -> float:
        now = perf_counter()
        self.active = False
        self.version.stats.record(now, now - self.t0, status)
        backend = self.backend
        backend.inflight -= 1
        if backend.removed and not backend.inflight:
            self.core.forget(backend)
        return now

    def finish(self, status: int) -> None:
        """The response is complete (or answered for): count it, then serve a pipelined request if any."""
        self.t_idle = self._account(status)
        self.t_head = 0.0
        self.conn = None
        self.pending = None
        self.replay = None
        if self.state != S_WAIT or not self.keep or self.core.draining:
            self._close()
            return
        self.state = S_HEAD
        if self.paused:
            self.paused = 0
            self.transport.resume_reading()
        if self.buf:
            data = self.buf
            self.buf = b""
            self._process(data)

    def close_idle(self) -> None:
        if not self.active:
            self._close()


    def timed_out(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.abort()
        self.fail(504, "the backend did not answer in time")
