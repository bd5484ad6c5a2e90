"""Request bodies on their way to the backend: streamed, flow-controlled, and kept for one resend; and the
client's other slow paths: its timeouts and the tunnel after a protocol upgrade.

Why a separate mixin: the client protocol is the hot path and stays small; bodies are the less common case
(most proxied requests are GETs) and carry most of the flow-control rules. Reading from the client pauses when
the backend socket is full, when a connection is still being opened and too much is buffered, and while a
pipelined next request waits for the current response.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from releasegate.router.http1 import Chunked, ProtocolError, simple_response

if TYPE_CHECKING:
    from releasegate.router.backend import BackendConn

S_HEAD, S_BODY, S_WAIT, S_CLOSED, S_TUNNEL = range(5)
P_PIPE, P_UPLOAD, P_PENDING = 1, 2, 4
REPLAY_MAX = 1 << 20
"""Request bytes kept to resend once when a pooled connection turns out to be dead; larger uploads are not."""
PENDING_MAX = 1 << 18


class RequestBody:
    """The body half of ``ClientProtocol``; it owns the slots it works on."""

    __slots__ = ("body_left", "buf", "chunked", "conn", "keep", "paused", "pending", "replay", "replay_size", "retried",
                 "state", "transport")
    transport: asyncio.Transport
    conn: BackendConn | None
    state: int
    buf: bytes
    chunked: Chunked | None
    body_left: int
    pending: list[bytes] | None
    replay: list[bytes] | None
    replay_size: int
    retried: bool
    paused: int
    keep: bool
    t_head: float
    t_idle: float

    def _account(self, status: int) -> float:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _reject(self, status: int, message: str, *, close: bool, pos: int = -1) -> int:
        raise NotImplementedError

    def fail(self, status: int, reason: str) -> None:
        raise NotImplementedError

    def body_timed_out(self) -> None:
        """The request body stalled past the body timeout (swept by ``Core.sweep``): the backend has half a
        request, so both connections go, and the user is told why (408, as nginx's client_body_timeout)."""
        conn = self.conn
        if conn is not None:
            conn.abort()
        self.fail(408, "the request body stalled")

    def head_timed_out(self) -> None:
        """The request head did not arrive within the header timeout (nginx's client_header_timeout); also how
        the oldest idle connections are shed near the fd limit. Nothing asked, nothing answered."""
        if self.buf:
            self.buf = b""
            self.transport.write(simple_response(408, "the request head did not arrive in time", False))
        self._close()

    def waiting_since(self) -> float:
        """When this idle connection began waiting for its client: the oldest is the first to shed."""
        return self.t_head or self.t_idle

    def tunnel(self, conn: BackendConn) -> None:
        """The backend switched protocols (101): from now on bytes go both ways untouched until either side
        closes. The request is counted now, as a 101 for its version; a tunnel is not idle-timed or shed."""
        self._account(101)
        self.state = S_TUNNEL
        self.conn = conn
        self.keep = False
        if self.buf:  # bytes the client sent after its upgrade request, held while it waited
            conn.transport.write(self.buf)
            self.buf = b""
        self._resume(P_PIPE)

    def _feed_body(self, data: bytes, pos: int) -> int:
        """Forward request-body bytes from ``data[pos:]``; returns where the body ended (or len(data))."""
        ch = self.chunked
        n = len(data)
        if ch is not None:
            try:
                stop = ch.feed(data, pos)
            except ProtocolError:
                self._reject(400, "malformed chunked request body", close=True)
                return n
            if stop < 0:
                self._send(data[pos:] if pos else data)
                return n
            self._send(data[pos:stop])
            self.chunked = None
            self.state = S_WAIT
            return stop
        left = self.body_left
        if n - pos < left:
            self._send(data[pos:] if pos else data)
            self.body_left = left - (n - pos)
            return n
        self._send(data[pos:pos + left])
        self.body_left = 0
        self.state = S_WAIT
        return pos + left

    def _send(self, chunk: bytes) -> None:
        conn = self.conn
        if conn is not None:
            conn.transport.write(chunk)
        else:
            pending = self.pending
            assert pending is not None  # set whenever conn is None during a request
            pending.append(chunk)
            if len(pending) > 4 and sum(map(len, pending)) > PENDING_MAX:
                self._pause(P_PENDING)
        if self.replay is not None:
            self.replay.append(chunk)
            self.replay_size += len(chunk)
            if self.replay_size > REPLAY_MAX:
                self.replay = None
                self.retried = True  # too big to resend: a dead pooled connection becomes a 502

    def _hold(self, data: bytes) -> None:
        """Bytes of a pipelined next request: kept until this response is complete."""
        self.buf += data
        self._pause(P_PIPE)

    def _pause(self, bit: int) -> None:
        if not self.paused and self.state != S_CLOSED:
            self.transport.pause_reading()
        self.paused |= bit

    def _resume(self, bit: int) -> None:
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and self.state != S_CLOSED:
                self.transport.resume_reading()

    def pause_upload(self) -> None:
        self._pause(P_UPLOAD)

    def resume_upload(self) -> None:
        self._resume(P_UPLOAD)
