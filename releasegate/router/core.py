"""The state the data plane shares between connections: routing table, backends and their pools, statistics.

Route changes swap the table object in one assignment; requests already dispatched keep the backend they got,
which is what lets a weight change never cut an in-flight request. A backend that leaves the routes stops
getting new requests at once, loses its idle pooled connections at once, and stays visible (with its in-flight
count) until its last request is done, so the controller can drain it before stopping the process.
"""

from __future__ import annotations

import asyncio
import heapq
import resource
from time import perf_counter

from releasegate.providers.base import Routes
from releasegate.router.backend import BackendConn
from releasegate.router.config import RouterConfig
from releasegate.router.proxy import ClientProtocol
from releasegate.router.routing import BUCKETS, Backend, RoutingTable
from releasegate.router.stats import Stats
from releasegate.router.upload import S_BODY, S_HEAD, S_WAIT

STICKY_MODES = {"none": 0, "cookie": 1, "header": 2}
FD_HEADROOM = 64
"""File descriptors kept free of client and backend connections: listeners, the admin API, logs, the loop."""


def fd_budget() -> int:
    """How many client plus backend connections the process may hold before it sheds idle ones."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(16, soft - FD_HEADROOM)


class Core:
    def __init__(self, config: RouterConfig, stats: Stats) -> None:
        self.config = config
        self.service = config.service
        self.stats = stats
        self.backends: dict[str, Backend] = {}
        self.table = RoutingTable(Routes(), 0, self.backends, stats)
        self.clients: set[ClientProtocol] = set()
        self.conns: set[BackendConn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.sticky_mode = STICKY_MODES[config.sticky]
        self.cookie_eq = config.sticky_cookie.encode() + b"="
        self.cookie_lines = [b"\r\nSet-Cookie: %s=%d; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"
                             % (config.sticky_cookie.encode(), b) for b in range(BUCKETS)]
        self.header_key = b"\r\n" + config.sticky_header.lower().encode() + b":"
        self.max_header_bytes = config.max_header_bytes
        self.max_idle_per_backend = config.max_idle_per_backend
        self.connect_timeout = config.connect_timeout
        self.response_timeout = config.response_timeout
        self.fd_budget = fd_budget()
        self.shed_batch = max(1, self.fd_budget // 32)
        self.shed_credit = 0  # connections still admitted on the strength of the last batch shed
        self.draining = False  # shutting down: answer what is in flight, then close each connection

    # --- routes -------------------------------------------------------------------------------------------

    def apply(self, routes: Routes, generation: int) -> None:
        table = RoutingTable(routes, generation, self.backends, self.stats)
        wanted = table.addresses()
        for address, backend in list(self.backends.items()):
            if address in wanted:
                backend.removed = False
                continue
            backend.removed = True
            idle, backend.idle = backend.idle, []
            for conn in idle:
                conn.close()
            if not backend.inflight:
                del self.backends[address]
        self.table = table

    def forget(self, backend: Backend) -> None:
        """A removed backend's last request is done: stop reporting it."""
        if self.backends.get(backend.address) is backend and backend.removed:
            del self.backends[backend.address]

    def inflight(self) -> dict[str, int]:
        return {address: b.inflight for address, b in self.backends.items()}

    def active_requests(self) -> int:
        return sum(1 for c in self.clients if c.active)

    def waiting(self) -> dict[str, list[float]]:
        """Start times of the requests sent in full and still waiting for the backend's first response byte, by
        version. Read by the statistics on demand rather than tracked per request: the hot path pays nothing."""
        out: dict[str, list[float]] = {}
        for c in self.clients:
            if c.active and c.state == S_WAIT and (c.conn is None or not c.conn.got):
                out.setdefault(c.version.name, []).append(c.t0)
        return out

    # --- backend connections ------------------------------------------------------------------------------

    def connect(self, client: ClientProtocol, backend: Backend, seq: int) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(client, backend, seq))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, client: ClientProtocol, backend: Backend, seq: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: BackendConn(self, backend),
                                                       backend.host, backend.port)
        except TimeoutError:
            client.connect_failed(seq, 502, f"cannot connect to backend {backend.address}: timed out after "
                                  f"{self.connect_timeout:g}s")
            return
        except OSError as exc:
            client.connect_failed(seq, 502, f"cannot connect to backend {backend.address}: "
                                  f"{exc.strerror or exc}")
            return
        if not client.attach_new(conn, seq):
            conn.idle_ticks = 0
            if backend.removed or len(backend.idle) >= self.max_idle_per_backend:
                conn.close()
            else:
                backend.idle.append(conn)

    # --- the file-descriptor budget ------------------------------------------------------------------------

    def admit(self) -> bool:
        """May one more client connection in? Near the fd limit, make room by closing the connections that have
        waited longest without a request in flight (slow or silent heads pile up, so they go first in practice)
        and the idle backend pool; False (the caller answers 503) when every connection is busy.

        Why not wait for EMFILE: by then accept() fails for everyone, users and attackers alike. Shedding a batch
        at a time keeps it to one scan per batch rather than one per connection.
        """
        if len(self.clients) + len(self.conns) < self.fd_budget:
            return True
        if self.shed_credit > 0:
            self.shed_credit -= 1
            return True
        freed = 0
        for backend in self.backends.values():
            idle, backend.idle = backend.idle, []
            for conn in idle:
                conn.close()
            freed += len(idle)
        candidates = (c for c in self.clients if not c.active and c.state == S_HEAD)
        for client in heapq.nsmallest(self.shed_batch, candidates, key=ClientProtocol.waiting_since):
            client.head_timed_out()
            freed += 1
        if not freed:
            return False
        self.shed_credit = freed - 1
        return True

    # --- housekeeping -------------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Once a second: 504 for backends silent past the response timeout, 408 for request heads and bodies
        slower than their timeouts, close idle keep-alive clients and pooled backend connections.

        A periodic sweep instead of a timer per request keeps timers off the hot path entirely.
        """
        now = perf_counter()
        self.stats.prune(self.table.version_names())
        config = self.config
        idle_limit = config.client_idle_timeout
        head_limit = config.header_timeout
        body_limit = config.body_timeout
        for client in list(self.clients):
            state = client.state
            if client.active:
                if state == S_BODY:
                    if client.moved or client.paused:  # paused: the router holds the client back, not a stall
                        client.moved = False
                        client.t_body = now
                    elif now - client.t_body > body_limit:
                        client.body_timed_out()
                        continue
                conn = client.conn
                if conn is not None and not conn.got and now - client.t0 > self.response_timeout:
                    client.timed_out()
            elif state == S_HEAD:
                if client.t_head:
                    if now - client.t_head > head_limit:
                        client.head_timed_out()
                elif now - client.t_idle > idle_limit:
                    client.close_idle()
        self._sweep_pools()

    def _sweep_pools(self) -> None:
        """Close pooled backend connections unused for ``backend_idle_timeout`` (counted in sweeps)."""
        limit = self.config.backend_idle_timeout
        for backend in self.backends.values():
            idle = backend.idle
            if not idle:
                continue
            kept = []
            for conn in idle:
                conn.idle_ticks += 1
                if conn.closed or conn.idle_ticks > limit:
                    conn.close()
                else:
                    kept.append(conn)
            if len(kept) != len(idle):
                backend.idle = kept

    def close_idle_clients(self) -> None:
        for client in list(self.clients):
            if not client.active:
                client.close_idle()

    def close_all(self) -> None:
        for client in list(self.clients):
            client.transport.abort()
        for conn in list(self.conns):
            conn.abort()
