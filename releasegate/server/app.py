"""The server's FastAPI app: health, metrics, the Alertmanager webhook, and the routers of the API.

``create_app(state_dir)`` builds everything from the state dir alone (the OpenAPI document and the tests build it
the same way). The app reaches the state only through the service layer and the store classes, never SQL, so a
store on PostgreSQL (issue 11, section 5) replaces classes, not routes.

Why a body limit in an ASGI middleware: uvicorn bounds headers, not bodies; the middleware reads the body (at
most ``MAX_BODY``) before the app runs, so a client that lies in Content-Length (or sends none, chunked) still
gets a 413.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from pydantic import BaseModel

from releasegate import __version__
from releasegate.dora_metrics import DoraCollector
from releasegate.engine.clock import TimedClock
from releasegate.metrics_exporter import StoreCollector
from releasegate.server import problems
from releasegate.server.auth import need
from releasegate.server.gc_pauses import shorten_gc_pauses
from releasegate.server.reads import Reads
from releasegate.server.runner import Supervisor
from releasegate.store.leases import DEFAULT_TTL
from releasegate.store.server import Grant, ServerStore

MAX_BODY = 1 << 20
"""A spec, an Alertmanager notification or a policy is far below a megabyte; anything larger is refused (413)."""
REQUEST_TIMEOUT = 10.0
"""Seconds a request's head (releasegate.server.protocol), and then its body, may take to arrive."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _replay(body: list[bytes], first: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then what the client sends next (disconnect)."""
    pending: list[Message] = [first] if first is not None else [
        {"type": "http.request", "body": b"".join(body), "more_body": False}]

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()
    return replayed


def _lone_surrogate(body: bytes) -> bool:
    """JSON allows ``"\\ud800"``, which decodes to a string no file, database or answer can encode: refused once,
    here, rather than failing wherever the text goes next."""
    if b"\\u" not in body or not re.search(rb"\\u[dD][89a-fA-F]", body):
        return False
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):  # not JSON (or nested past parsing): the app answers that
        return False
    return False


class BodyLimit:
    """Answer 413 (problem+json) to a request whose body exceeds ``limit`` bytes, declared or actually sent, and
    408 to one whose body has not all arrived ``timeout`` seconds after its head (a slow client holds its own
    connection only that long)."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, timeout: float = REQUEST_TIMEOUT) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        body: list[bytes] = []
        seen, more = 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout
        while more:  # read the whole (bounded) body first: the app never sees a request it would have to cut
            try:
                async with asyncio.timeout_at(deadline):  # not wait_for: that runs receive() in a task of its own
                    message = await receive()
            except TimeoutError:
                answer = problems.response(408, "timeout", f"the request body did not arrive within "
                                                           f"{self.timeout:g} s")
                await answer(scope, receive, send)
                return
            if message["type"] != "http.request":
                await self.app(scope, _replay([], message, receive), send)
                return
            seen += len(message.get("body", b""))
            if seen > self.limit:
                await self._refuse(scope, receive, send)
                return
            body.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        if _lone_surrogate(b"".join(body)):
            answer = problems.response(400, "invalid", "the request body holds a \\u escape that is no character "
                                                       "(a lone UTF-16 surrogate such as \\ud800); send UTF-8 text")
            await answer(scope, receive, send)
            return
        await self.app(scope, _replay(body, None, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = problems.response(413, "too-large", f"the request body is larger than {self.limit} bytes")
        await answer(scope, receive, send)


class Timed:
    """Each answer's latency into ``latency`` (by method, route template, status). A plain ASGI wrapper rather
    than ``@app.middleware("http")``, which runs every endpoint in a task of its own behind memory streams: several
    more turns of the event loop per request, each one a wait behind every controller that is due
    (bench/bench_server_scale.py)."""

    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app, self.latency = app, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # 500 unless an answer starts (an error escaping the app)

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")  # the router sets it on this scope
            self.latency.labels(scope["method"], path, str(status)).observe(time.perf_counter() - start)


class Health(BaseModel):
    status: str
    version: str


def create_app(state_dir: Path, *, spec_root: Path | None = None, adopt: bool = True,
               request_timeout: float = REQUEST_TIMEOUT, lease_ttl: float = DEFAULT_TTL) -> FastAPI:
    """The app over ``state_dir``; ``spec_root`` bounds the spec paths a request may name (default: cwd);
    ``lease_ttl``: how long a rollout's lease lasts unrenewed (the longest failover, docs/server.md)."""
    registry = CollectorRegistry(auto_describe=True)
    lag = Histogram("releasegate_scheduling_lag_seconds", "How late a rollout's controller woke for what was due "
                    "(its next decision, a command poll).", buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                                    1.0, 2.5, 5.0), registry=registry)
    supervisor = Supervisor(state_dir, TimedClock(lag.observe), lease_ttl)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ServerStore(state_dir, create=True).close()  # the server's tables, once, before the first request
        shorten_gc_pauses()
        if adopt:
            await supervisor.adopt()
            supervisor.start()
        supervisor.ready = True
        try:
            yield
        finally:
            await supervisor.shutdown()
            app.state.reads.close()

    app = FastAPI(title="releasegate", version=__version__, lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None,  # no unauthenticated route but the probes: the document is served below
                  description="The releasegate server's API (docs/server.md). Every route but /healthz and /readyz "
                              "needs `Authorization: Bearer TOKEN`; errors are application/problem+json.")
    app.state.state_dir = state_dir
    app.state.supervisor = supervisor
    app.state.reads = Reads(state_dir)  # the loop's kept connections for the hot reads
    app.state.spec_root = (spec_root or Path.cwd()).resolve()
    problems.install(app)
    latency = Histogram("releasegate_server_request_seconds", "Time to answer an API request.",
                        ["method", "route", "status"], registry=registry)
    Gauge("releasegate_server_active_rollouts", "Rollouts this server drives now.",
          registry=registry).set_function(lambda: float(supervisor.active()))
    store_metrics = StoreCollector(state_dir)  # keeps what it parsed and wrote; a scrape redoes what changed
    dora_metrics = app.state.dora = DoraCollector(state_dir)  # 30-day DORA figures, at most once a minute

    app.add_middleware(Timed, latency=latency)

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """Alive (no auth): the process answers."""
        return Health(status="ok", version=__version__)

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def readyz() -> Any:
        """Ready (no auth): the store opens and the rollouts left by a previous run are adopted."""
        try:
            ServerStore(state_dir).close()
        except Exception:
            return JSONResponse({"status": "store unavailable", "version": __version__}, status_code=503)
        if not supervisor.ready:
            return JSONResponse({"status": "starting", "version": __version__}, status_code=503)
        return Health(status="ready", version=__version__)

    @app.get("/metrics", response_class=Response, tags=["metrics"])
    def metrics(_: Grant = Depends(need("viewer"))) -> Response:
        """Prometheus exposition: the store's series (docs/integrations.md) and the server's own."""
        body = store_metrics.render() + dora_metrics.render() + generate_latest(registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/v1/openapi.json", include_in_schema=False)
    def openapi(_: Grant = Depends(need("viewer"))) -> JSONResponse:
        """This API's OpenAPI document (the same as docs/openapi.json)."""
        return JSONResponse(app.openapi())

    from releasegate.server.routes_dora import router as dora
    from releasegate.server.routes_governance import router as governance
    from releasegate.server.routes_rollouts import router as rollouts

    app.include_router(rollouts, prefix="/api/v1")
    app.include_router(governance, prefix="/api/v1")
    app.include_router(dora, prefix="/api/v1")
    from releasegate.server.dashboard import mount

    mount(app)  # the browser dashboard at / (docs/dashboard.md): its own session sign-in, the API's roles
    app.add_middleware(BodyLimit, timeout=request_timeout)
    return app


__all__ = ["MAX_BODY", "REQUEST_TIMEOUT", "BodyLimit", "create_app"]
