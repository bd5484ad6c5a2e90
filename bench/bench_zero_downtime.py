"""Zero downtime through nginx and through HAProxy: failed client requests during real rollouts under load.

For each proxy, a private instance on loopback ports and temporary files, started exactly as
tests/test_zero_downtime.py starts it (the same helpers), and the same three rollouts as that test, under
continuous load from 6 keep-alive-capable httpx clients (``Load`` from tests/support/rollouts.py: no cookie jar,
so a canary gets its share; no retries):

1. a blue-green switch 1.0.0 -> 2.0.0,
2. a canary promotion of 3.0.0 (20 % then 50 %, 1 s pauses, then 100 %),
3. a rollback: a canary of 4.0.0 held on a manual step and aborted.

nginx runs with the spec's defaults (``client_keepalive: 0``, so ``keepalive_timeout 0;``); HAProxy with its
runtime API (no reloads). Per proxy it prints the requests, the failed ones (status >= 500 or a connection error),
requests/s over the run, the route changes (``set_routes`` calls, timed by wrapping the providers' method in this
process) and per-request latency: p50 / p99 / max over the whole run, and p99 / max of the requests that started
within 250 ms of a route change. The first 30 requests (the clients' start-up: six httpx clients created at once)
count as requests, and in the failures, but not in req/s or latency. The clients share one event loop with the
controller that runs the rollouts, as in the test: a controller step that holds the loop (starting a rollout:
the store, the preflight) shows up as client latency that neither proxy caused.

    python3 bench/bench_zero_downtime.py     # about 30 s; last line: zero-downtime failed requests: 0 of N (...)

Exit code 0 when nothing failed, 1 when a request failed, 2 when nginx or haproxy is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support and tests.test_zero_downtime, like a test run from the checkout

from releasegate import service  # noqa: E402
from releasegate.providers.routers.haproxy import HaproxyRouter  # noqa: E402
from releasegate.providers.routers.nginx import NginxRouter  # noqa: E402
from tests.support.haproxy import HAPROXY  # noqa: E402
from tests.support.nginx import NGINX  # noqa: E402
from tests.support.rollouts import Load, cleanup  # noqa: E402
from tests.test_zero_downtime import (  # noqa: E402
    BLUEGREEN,
    Proxy,
    bluegreen_canary_abort,
    deploy,
    haproxy_proxy,
    nginx_proxy,
    provider_for,
    spec_for,
)

CONCURRENCY = 6
AROUND = 0.25
"""Seconds before and after a route change in which a request counts as "around" it."""

ROUTE_CHANGES: list[tuple[float, float]] = []
"""(start, end) on the monotonic clock of every set_routes call, by any provider."""


P = ParamSpec("P")


def timed(set_routes: Callable[P, Awaitable[None]]) -> Callable[P, Coroutine[Any, Any, None]]:
    @functools.wraps(set_routes)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        started = time.monotonic()
        try:
            await set_routes(*args, **kwargs)
        finally:
            ROUTE_CHANGES.append((started, time.monotonic()))
    return wrapper


@dataclass
class Result:
    kind: str
    requests: int
    failed: int
    rps: float
    route_changes: int
    latencies: list[float]  # every request after the warm-up, seconds
    around: list[float]  # requests that started within AROUND of a route change
    failures: list[str]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(kind: str, directory: Path) -> Result:
    starts: Callable[[Path], Iterator[Proxy]] = nginx_proxy if kind == "nginx" else haproxy_proxy
    with contextlib.contextmanager(starts)(directory) as proxy:
        ctx = service.new_context(directory / "state")
        spec = spec_for(proxy, directory, BLUEGREEN)
        router, haproxy = provider_for(spec, directory)
        try:
            st = await deploy(ctx, spec, "1.0.0")
            assert st.status == "promoted", st.reason
            ROUTE_CHANGES.clear()
            async with Load(proxy.url, concurrency=CONCURRENCY) as load:
                await load.wait_for(30)  # warm-up: every client has its connection and a few answers
                t0, warm = time.monotonic(), load.requests
                await bluegreen_canary_abort(ctx, proxy, directory, router, load)
            rps = (load.requests - warm) / (time.monotonic() - t0)
        finally:
            await cleanup(directory / "state", spec)
            if haproxy is not None:
                haproxy.stop()
    changes = list(ROUTE_CHANGES)
    measured = [(s, d) for s, d in load.latencies if s >= t0]
    around = [d for s, d in measured if any(a - AROUND <= s <= b + AROUND for a, b in changes)]
    return Result(kind, load.requests, len(load.failures), rps, len(changes), [d for _, d in measured], around,
                  load.failures)


def report(r: Result) -> None:
    ms = 1000.0
    print(f"{r.kind:8} {r.requests:6} requests  {r.failed} failed  {r.rps:4.0f} req/s  "
          f"{r.route_changes:2} route changes  latency p50 {pct(r.latencies, 0.5) * ms:5.1f} ms "
          f"p99 {pct(r.latencies, 0.99) * ms:6.1f} ms max {max(r.latencies) * ms:6.1f} ms; within "
          f"{AROUND * ms:.0f} ms of a route change ({len(r.around)} requests): p99 {pct(r.around, 0.99) * ms:6.1f} ms "
          f"max {max(r.around, default=float('nan')) * ms:6.1f} ms", flush=True)
    for failure in r.failures[:5]:
        print(f"         failed: {failure}")


async def main() -> int:
    missing = [f"{name} ({path})" for name, path in (("nginx", NGINX), ("haproxy", HAPROXY))
               if shutil.which(path) is None]
    if missing:
        print(f"bench: {' and '.join(missing)} not found; install them (apt-get install -y nginx-light haproxy)",
              file=sys.stderr)
        return 2
    NginxRouter.set_routes = timed(NginxRouter.set_routes)  # type: ignore[method-assign]
    HaproxyRouter.set_routes = timed(HaproxyRouter.set_routes)  # type: ignore[method-assign]
    results = []
    for kind in ("nginx", "haproxy"):
        directory = Path(tempfile.mkdtemp(prefix=f"rg-bench-zd-{kind}-"))
        try:
            results.append(await run(kind, directory))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        report(results[-1])
    failed, total = sum(r.failed for r in results), sum(r.requests for r in results)
    print(f"{CONCURRENCY} keep-alive-capable clients without retries per proxy; cpus: {os.cpu_count()}")
    print(f"zero-downtime failed requests: {failed} of {total} ("
          + ", ".join(f"{r.kind} {r.failed} of {r.requests}" for r in results) + ")")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
