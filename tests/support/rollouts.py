"""Helpers for end-to-end rollout tests: specs on free ports, a load generator that counts every failed request,
and cleanup that stops every process a test started."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from releasegate.providers.platforms import make_platform
from releasegate.providers.platforms.local_processes import MARKER
from releasegate.providers.routers.builtin import BuiltinRouterClient, read_router_state, router_client, stop_router
from releasegate.spec import load_spec

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_spec(directory: Path, port: int, strategy: str, *, faults: str = "", rules: str | None = None,
               extra: str = "", instances: int = 2, smoke_path: str = "/api/items", tier: str = "important",
               rollback: str = "{staircase: [10, 0], step_wait: 1s}", post_promotion: str = "1s") -> Path:
    rules = rules if rules is not None else "[{metric: error_rate, max: 0.05, for: 2s}]"
    text = f"""\
service: shop
tier: {tier}
platform:
  command: "{PY} -m releasegate.demoapp --port {{port}}"
  instances: {instances}
  env: {{FAULTS: "{faults}"}}
  stop_grace: 3s
router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}
health: {{path: /health, interval: 100ms, timeout: 1s, attempts: 50}}
smoke:
  - {{method: GET, path: {smoke_path}, expect_status: [200], max_latency: 1s}}
strategy: {strategy}
analysis:
  interval: 500ms
  post_promotion: {post_promotion}
  rules: {rules}
rollback: {rollback}
{extra}"""
    path = directory / "shop.yaml"
    path.write_text(text)
    return path


@dataclass
class Load:
    """Continuous client traffic through the router; every failure (status >= 500 or connection error) is kept.

    Each request drops the sticky cookie, so the load looks like many users: with a few cookie-keeping clients,
    a 20 % canary can get no traffic at all (and, rightly, never advances).

    Every request is traced (httpx's ``trace`` extension) to know whether it went out on a connection an earlier
    request opened (``reused``). With ``retry_reused``, the clients behave like browsers, curl and Go's net/http:
    a GET sent on a reused connection that the server closed or reset before the response head arrived is sent
    once more on a new connection (``retries`` counts them); anything else is a failure as before."""

    url: str
    concurrency: int = 4
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"Connection": "close"}: a new connection each
    by_version: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    retry_reused: bool = False
    reused: int = 0  # requests (and retries) sent on a connection that was already open
    retries: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (monotonic start, seconds) per request
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _worker(self) -> None:
        async with httpx.AsyncClient(timeout=10.0, headers=self.headers) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = await self._get(client)
                    client.cookies.clear()  # every request a new user: sticky buckets spread over all versions
                    version = r.headers.get("x-version", "?")
                    self.by_version[version] = self.by_version.get(version, 0) + 1
                    if r.status_code >= 500:
                        self.failures.append(f"{r.status_code} from {version}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.latencies.append((started, time.monotonic() - started))
                self.requests += 1
                await asyncio.sleep(0.005)

    async def _get(self, client: httpx.AsyncClient) -> httpx.Response:
        for attempt in (1, 2):
            events: list[str] = []

            async def trace(name: str, info: dict[str, Any], events: list[str] = events) -> None:
                events.append(name)

            try:
                return await client.get(self.url, extensions={"trace": trace})
            except httpx.TransportError as exc:
                if attempt == 2 or not self.retry_reused or not _closed_before_response(exc, events):
                    raise
                self.retries += 1
            finally:
                if "http11.send_request_headers.started" in events and "connection.connect_tcp.started" not in events:
                    self.reused += 1
        raise AssertionError("unreachable")

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        """Until ``n`` more requests completed (so a test knows traffic really flows)."""
        target = self.requests + n
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.requests < target:
            if loop.time() > deadline:
                raise AssertionError(f"traffic stalled at {self.requests} requests")
            await asyncio.sleep(0.02)


def _closed_before_response(exc: httpx.TransportError, events: list[str]) -> bool:
    """The request went out on a reused connection, and that connection was closed or reset while the request was
    sent or before the response head arrived: the case where HTTP clients retry an idempotent request."""
    reused = "connection.connect_tcp.started" not in events
    failed = {"http11.send_request_headers.failed", "http11.send_request_body.failed",
              "http11.receive_response_headers.failed"}  # httpcore then traces response_closed
    before_head = "http11.receive_response_headers.complete" not in events and not failed.isdisjoint(events)
    closed = isinstance(exc, httpx.ReadError | httpx.WriteError) or (
        isinstance(exc, httpx.RemoteProtocolError) and "without sending a response" in str(exc))
    return reused and before_head and closed


async def cleanup(state_dir: Path, spec_path: Path) -> None:
    spec = load_spec(spec_path)
    platform = make_platform(spec.platform, state_dir, spec_path.parent)
    for inst in await platform.instances(spec.service):
        await platform.stop(inst, 1.0)
    stop_router(state_dir, spec.service, 5.0)


class RolloutEnv:
    """A state dir, a free router port, specs written for them, and a look at what runs: the end-to-end tests'
    fixture (``close`` stops every process the last spec started)."""

    def __init__(self, tmp_path: Path) -> None:
        from releasegate import service

        self.tmp_path = tmp_path
        self.state = tmp_path / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api/items"
        self.ctx = service.new_context(self.state)
        self.made: list[Path] = []

    def spec(self, strategy: str, *, control: bool = False, **kw: Any) -> Path:
        """``write_spec`` on this env's port; ``control`` lets a test change faults at run time (DEMO_CONTROL)."""
        path = write_spec(self.tmp_path, self.port, strategy, **kw)
        if control:
            path.write_text(path.read_text().replace('env: {FAULTS: "', 'env: {DEMO_CONTROL: "1", FAULTS: "'))
        self.made.append(path)
        return path

    def router(self) -> BuiltinRouterClient:
        info = read_router_state(self.state, "shop")
        assert info is not None, "the router is not running"
        return router_client(self.state, "shop", str(info["admin"]))

    async def routes(self) -> dict[str, int]:
        return (await self.router().get_routes("shop")).weights()

    def close(self) -> None:
        if self.made:
            asyncio.run(cleanup(self.state, self.made[-1]))


def marked_processes(state: Path) -> list[psutil.Process]:
    """Live processes carrying the marker of an instance under ``state`` (what the platform itself searches)."""
    prefix = str(state.resolve())
    out = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER, "").startswith(prefix) and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out
