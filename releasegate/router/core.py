"""The state the data plane shares between connections: routing table, backends and their pools, statistics.

Route changes swap the table object in one assignment; requests already dispatched keep the backend they got,
which is what lets a weight change never cut an in-flight request. A backend that leaves the routes stops
getting new requests at once, loses its idle pooled connections at once, and stays visible (with its in-flight
count) until its last request is done, so the controller can drain it before stopping the process.
"""

from __future__ import annotations

import asyncio
from time import perf_counter

from releasegate.providers.base import Routes
from releasegate.router.backend import BackendConn
from releasegate.router.config import RouterConfig
from releasegate.router.proxy import ClientProtocol
from releasegate.router.routing import BUCKETS, Backend, RoutingTable
from releasegate.router.stats import Stats
from releasegate.router.upload import S_HEAD, S_WAIT

STICKY_MODES = {"none": 0, "cookie": 1, "header": 2}


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
            if backend.removed or len(backend.idle) >= self.max_idle_per_backend:
                conn.close()
            else:
                backend.idle.append(conn)

    # --- housekeeping -------------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Once a second: 504 for backends silent past the response timeout, close idle keep-alive clients.

        A periodic sweep instead of a timer per request keeps timers off the hot path entirely.
        """
        now = perf_counter()
        self.stats.prune(self.table.version_names())
        idle_limit = self.config.client_idle_timeout
        for client in list(self.clients):
            if client.active:
                conn = client.conn
                if conn is not None and not conn.got and now - client.t0 > self.response_timeout:
                    client.timed_out()
            elif client.state == S_HEAD and not client.buf and now - client.t_idle > idle_limit:
                client.close_idle()

    def close_idle_clients(self) -> None:
        for client in list(self.clients):
            if not client.active:
                client.close_idle()

    def close_all(self) -> None:
        for client in list(self.clients):
            client.transport.abort()
        for conn in list(self.conns):
            conn.abort()
