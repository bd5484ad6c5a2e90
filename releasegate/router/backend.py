"""One keep-alive connection to a backend: parses the response head, frames the body, passes bytes through.

Why framing matters even though bytes are passed through untouched: the router must know where a response ends
to give the connection back to the pool (Content-Length, chunked) or to know that the backend will close it
(HTTP/1.0 and length-less responses, which are then also the end of the client's connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from releasegate.router.http1 import HOP_BY_HOP, Chunked, ProtocolError, connection_tokens, strip_headers
from releasegate.router.upload import S_BODY, S_CLOSED

if TYPE_CHECKING:
    from releasegate.router.core import Core
    from releasegate.router.proxy import ClientProtocol
    from releasegate.router.routing import Backend

H_IDLE, H_HEAD, H_CL, H_CHUNKED, H_EOF, H_TUNNEL = range(6)
MAX_RESPONSE_HEAD = 65536
_KEEP_TAIL = b"\r\nConnection: keep-alive\r\n\r\n"
_CLOSE_TAIL = b"\r\nConnection: close\r\n\r\n"
_STATUS = {b"%03d" % code: code for code in range(100, 600)}


class BackendConn(asyncio.Protocol):
    __slots__ = ("backend", "buf", "chunked", "client", "closed", "core", "got", "idle_ticks", "keep", "left",
                 "paused", "reused", "state", "status", "transport")

    def __init__(self, core: Core, backend: Backend) -> None:
        self.core = core
        self.backend = backend
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.client: ClientProtocol | None = None
        self.state = H_IDLE
        self.buf = b""
        self.left = 0
        self.chunked: Chunked | None = None
        self.reused = False
        self.got = False
        self.keep = True
        self.status = 0
        self.closed = False
        self.paused = False
        self.idle_ticks = 0  # sweeps seen while pooled; reset when a request takes the connection

    # --- asyncio callbacks --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.core.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.core.conns.discard(self)
        client = self.client
        if client is None:
            with contextlib.suppress(ValueError):
                self.backend.idle.remove(self)
            return
        self.client = None
        if self.state == H_TUNNEL:
            client.close_idle()  # the tunnel's request was counted at the 101
        elif self.state == H_EOF:
            client.finish(self.status)
        elif not self.got or self.state == H_HEAD:
            if not self.got and self.reused and client.retry():
                return
            reason = "the backend closed the connection" if exc is None else f"the backend failed: {exc}"
            client.fail(502, reason)
        else:
            client.abort(502)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # bytes on an idle connection: its framing can no longer be trusted
            self.keep = False
            self.close()
            return
        self.got = True
        st = self.state
        if st == H_CL:
            n = len(data)
            left = self.left
            if n < left:
                self.left = left - n
                client.transport.write(data)
                return
            if n > left:
                self.keep = False
                data = data[:left]
            client.transport.write(data)
            self._done(client)
        elif st == H_HEAD:
            self._head(data, client)
        elif st == H_CHUNKED:
            try:
                end = self.chunked.feed(data)  # type: ignore[union-attr]  # set with H_CHUNKED
            except ProtocolError:
                self.client = None
                self.close()
                client.abort(502)
                return
            if end < 0:
                client.transport.write(data)
                return
            if end < len(data):
                self.keep = False
                data = data[:end]
            client.transport.write(data)
            self._done(client)
        elif st in (H_EOF, H_TUNNEL):
            client.transport.write(data)

    def eof_received(self) -> bool | None:
        return None  # close; a close-delimited body ends here (connection_lost finishes it)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_upload()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_upload()

    # --- used by the client side --------------------------------------------------------------------------

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.client = None
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    # --- response parsing ---------------------------------------------------------------------------------

    def _head(self, data: bytes, client: ClientProtocol) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_RESPONSE_HEAD:
                self._bad(client, "response head too large")
            else:
                self.buf = data
            return
        low = data[:end].lower()
        status = _STATUS.get(low[9:12], 0) if low.startswith(b"http/1.") else 0
        if not status or (len(low) > 12 and low[12] != 32):
            self._bad(client, "malformed response status line")
            return
        pos = end + 4
        if status < 200:
            if status == 101:
                self._switch(data, pos, client)
                return
            client.transport.write(data[:pos])  # 100 Continue, 103 Early Hints: pass on, await the final one
            if pos < len(data):
                self._head(data[pos:], client)
            return
        i = low.find(b"\r\nconnection:")
        conn_v: bytes | None = None
        if i >= 0:
            j = low.find(b"\r\n", i + 13)
            conn_v = low[i + 13:j if j >= 0 else end].strip()
        http11 = low[7] == 49
        keep = http11 and not client.http10 and (conn_v is None or conn_v.find(b"close") < 0)
        left = 0
        if client.is_head or status == 204 or status == 304:
            mode = H_IDLE
        elif (i := low.find(b"\r\ntransfer-encoding:")) >= 0:  # find, not "in": see proxy._request
            te = low[i + 20:].split(b"\r\n", 1)[0].strip()
            mode = H_CHUNKED if te.endswith(b"chunked") else H_EOF
        else:
            i = low.find(b"\r\ncontent-length:")
            if i >= 0:
                j = low.find(b"\r\n", i + 17)
                cl = low[i + 17:j if j >= 0 else end].strip()
                if not cl.isdigit() or (j >= 0 and low.find(b"\r\ncontent-length:", j) >= 0):
                    self._bad(client, "invalid Content-Length in the response")
                    return
                mode = H_CL
                left = int(cl)
            else:
                mode = H_EOF
        if mode == H_EOF:
            keep = False
        ckeep = client.keep and mode != H_EOF
        client.keep = ckeep
        self.keep = keep
        self.status = status
        cookie = client.set_cookie
        write = client.transport.write
        n = len(data)
        prefix: bytes | None = None  # None: the head goes out exactly as it came in
        if ckeep and http11 and ((conn_v is None and not client.http10)
                                 or (conn_v == b"keep-alive" and low.find(b"\r\nkeep-alive:") < 0)):
            if cookie is not None:
                if mode == H_CL and n - pos == left:  # the common case: one copy, cookie after status line
                    write(data.replace(b"\r\n", cookie + b"\r\n", 1))
                    self._done(client)
                    return
                prefix = data[:end] + cookie + b"\r\n\r\n"
        else:
            drop = HOP_BY_HOP | connection_tokens(conn_v) if conn_v else HOP_BY_HOP
            stripped, _ = strip_headers(data[:end], drop)
            if not http11 and ckeep and not client.http10:
                stripped = b"HTTP/1.1" + stripped[8:]  # an HTTP/1.0 status line would make the client hang up
            prefix = stripped + (cookie or b"") + (_KEEP_TAIL if ckeep else _CLOSE_TAIL)
        if mode == H_CL:
            if n - pos >= left:
                stop = pos + left
                if stop < n:
                    self.keep = False
                write((data if stop == n else data[:stop]) if prefix is None else prefix + data[pos:stop])
                self._done(client)
            else:
                self.left = left - (n - pos)
                self.state = H_CL
                write(data if prefix is None else prefix + data[pos:])
        elif mode == H_IDLE:
            if pos < n:
                self.keep = False
            write(data[:pos] if prefix is None else prefix)
            self._done(client)
        elif mode == H_CHUNKED:
            ch = Chunked()
            try:
                stop = ch.feed(data, pos)
            except ProtocolError:
                self._bad(client, "malformed chunked response")
                return
            if stop < 0:
                self.chunked = ch
                self.state = H_CHUNKED
                write(data if prefix is None else prefix + data[pos:])
            else:
                if stop < n:
                    self.keep = False
                write(data[:stop] if prefix is None else prefix + data[pos:stop])
                self._done(client)
        else:
            self.state = H_EOF
            write(data if prefix is None else prefix + data[pos:])

    def _switch(self, data: bytes, pos: int, client: ClientProtocol) -> None:
        """101 Switching Protocols: pass it on (with the sticky cookie) and tunnel both connections."""
        if not client.upgrade or client.state == S_CLOSED:
            self._bad(client, "the backend switched protocols without being asked")
            return
        self.state = H_TUNNEL
        self.keep = False
        cookie = client.set_cookie
        write = client.transport.write
        write(data if cookie is None else data.replace(b"\r\n", cookie + b"\r\n", 1))
        client.tunnel(self)

    def _bad(self, client: ClientProtocol, reason: str) -> None:
        self.client = None
        self.close()
        client.fail(502, reason)

    def _done(self, client: ClientProtocol) -> None:
        """The response is complete: back to the pool first, so a pipelined next request may reuse us."""
        self.client = None
        self.state = H_IDLE
        self.chunked = None
        if self.paused:
            self.resume()
        backend = self.backend
        if client.state == S_BODY:  # answered before the whole body was sent: the rest would be garbage
            self.keep = False
        if self.keep and not backend.removed and not self.closed and \
                len(backend.idle) < self.core.max_idle_per_backend:
            backend.idle.append(self)
        else:
            self.close()
        client.finish(self.status)
