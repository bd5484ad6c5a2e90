"""uvicorn's h11 protocol with a deadline for each request head.

Why: uvicorn times out only idle keep-alive connections, after a response. A client that opens a connection and
sends its request head a byte at a time (slowloris), or nothing at all, holds the connection forever; a thousand
of them would fill ``limit_concurrency`` and every other client would get 503. Here each connection must deliver a
complete request head within ``head_timeout`` seconds of connecting (or of its previous response), else it is
closed. The body has its own deadline in the app (``releasegate.server.app.BodyLimit``: 408).
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("releasegate.server")


class HeadDeadline(H11Protocol):
    """Close a connection whose request head is not complete ``head_timeout`` seconds after it could start."""

    head_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the head arrived: the app (and BodyLimit) take over
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request's head, on a kept-alive connection

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.info("closed a connection from %s: no complete request head within %.0f s", self.client and
                 self.client[0], self.head_timeout)
        self.transport.close()


def with_head_timeout(seconds: float) -> type[HeadDeadline]:
    """The protocol class uvicorn is given (``http=``), with this deadline."""
    return type("HeadDeadline", (HeadDeadline,), {"head_timeout": seconds})


__all__ = ["HeadDeadline", "with_head_timeout"]
