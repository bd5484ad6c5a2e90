#!/usr/bin/env python3
"""Benchmark: 1,000 concurrent rollouts in one server process (issue 11, section 4).

Why in-process fakes: the question is what the server's own machinery (the supervisor's asyncio tasks, the
controllers, the store, the API) costs at that size, not what 1,000 real processes and routers cost. So the
platform, router and metric source are the small in-memory classes below (the provider contracts of
releasegate/providers/base.py), passed through ``service.Context``'s provider factory; everything else is real:
admission (preflight, policy), ``service.start_admitted``, the controller, SQLite, and the FastAPI app served by
uvicorn on a free loopback port in the same event loop.

Each rollout is a canary with one step held long enough (``--seconds`` plus the start-up) that all of them are
active during the measuring window, analysed every second. Measured in that window:

- scheduling lag: every wake-up of a controller's sleep (``LagClock`` wraps the clock the controller uses), how
  late it woke: now - due. The analysis that is due runs on such a wake-up.
- RSS (psutil) at the end of the window, and CPU: the server process's CPU time over wall time.
- ``GET /api/v1/rollouts`` latency over real HTTP, five requests a second, and ``GET /metrics`` every 2 s, from a
  client in a process of its own (a client thread in the server's process would fight its event loop for the GIL,
  which no real client does).

And why, when a figure is missed: where the event loop stalled (``StallWatch``: the loop thread's stack sampled
whenever a heartbeat is over 100 ms late), the garbage collector's pauses per generation (``GcWatch``: a full
collection holds the GIL, so no sampler sees it), when the wake-ups over 100 ms late happened (in bursts: a
periodic cause shows as a period), and the list's median and slowest requests.

The last line is the key figure: ``rollouts: N, lag_p99_ms: X, rss_mb: Y``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import uvicorn  # noqa: E402

from releasegate import service  # noqa: E402
from releasegate.controller import CheckOutcome, Providers  # noqa: E402
from releasegate.engine.clock import TimedClock  # noqa: E402
from releasegate.errors import UserError  # noqa: E402
from releasegate.providers.base import Instance, MetricQuery, Routes  # noqa: E402
from releasegate.server.app import create_app  # noqa: E402
from releasegate.server.auth import issue  # noqa: E402
from releasegate.server.runner import Supervisor  # noqa: E402
from releasegate.spec.models import Spec  # noqa: E402

TARGETS = {"lag_p99_ms": 100.0, "rss_mb": 1024.0, "cpu_cores": 1.0, "list_p99_ms": 50.0}


class LagClock(TimedClock):
    """The server's lag-measuring clock, keeping how late each sleep woke (only while ``measuring``)."""

    def __init__(self) -> None:
        super().__init__(self._note)
        self.lags: list[float] = []
        self.late_at: list[tuple[float, float]] = []  # (when, how late) of the wake-ups over 100 ms late
        self.measuring = False

    def _note(self, late: float) -> None:
        if self.measuring:
            self.lags.append(late)
            if late > 0.1:
                self.late_at.append((time.monotonic(), late))


class SimPlatform:
    """Instances are records: starting one is remembering it."""

    def __init__(self) -> None:
        self.live: dict[str, list[Instance]] = {}

    async def start(self, service_name: str, version: str, count: int) -> list[Instance]:
        have = [i for i in self.live.get(service_name, []) if i.version == version]
        for n in range(len(have), count):
            have.append(Instance(service_name, version, f"{version}-{n}", "127.0.0.1", 1 + n, started_at=time.time()))
        self.live[service_name] = [i for i in self.live.get(service_name, []) if i.version != version] + have
        return have

    async def stop(self, instance: Instance, grace: float) -> None:
        self.live[instance.service] = [i for i in self.live.get(instance.service, []) if i != instance]

    async def instances(self, service_name: str) -> list[Instance]:
        return list(self.live.get(service_name, []))

    async def alive(self, instance: Instance) -> bool:
        return instance in self.live.get(instance.service, [])


class SimRouter:
    def __init__(self) -> None:
        self.routes: dict[str, Routes] = {}

    async def set_routes(self, service_name: str, routes: Routes) -> None:
        self.routes[service_name] = routes

    async def get_routes(self, service_name: str) -> Routes:
        return self.routes.get(service_name, Routes())

    async def inflight(self, service_name: str, backend: str) -> int:
        return 0


class SimMetrics:
    """A healthy version: no errors, 50 ms latency."""

    async def query(self, q: MetricQuery) -> float | None:
        return 0.0 if q.metric == "error_rate" else 0.05


async def _ok(*_: Any) -> CheckOutcome:
    return CheckOutcome(True, "", {})


PLATFORM, ROUTER, METRICS = SimPlatform(), SimRouter(), SimMetrics()


async def sim_factory(spec: Spec, spec_dir: Path, state_dir: Path, clock: Any) -> Providers:
    """The simulated platform, router and metric source (shared, keyed by service: a rollout finds what the one
    before it left running, as on a real platform)."""
    return Providers(platform=PLATFORM, router=ROUTER, metrics=METRICS, health=_ok, smoke=_ok)


class SimSupervisor(Supervisor):
    """The server's supervisor, its contexts on the simulated providers and the lag-noting clock."""

    def __init__(self, state_dir: Path, clock: LagClock) -> None:
        super().__init__(state_dir, clock)

    def context(self, actor: str) -> service.Context:
        """The server's own context (its bells, its one lease keeper, ...) with the simulated providers."""
        ctx = super().context(actor)
        ctx.providers = sim_factory
        return ctx


class StallWatch:
    """Where the event loop stalls: a 10 ms heartbeat task in the loop, and a thread that, whenever the heartbeat
    is more than 100 ms late, samples the loop thread's stack (every 20 ms while the stall lasts). Each sample is
    counted under the innermost releasegate frames, so the report says which calls block the loop and for how
    long in all (samples x 20 ms). Why built in: a lag p99 is a symptom; this names the cause."""

    def __init__(self) -> None:
        self.beat = time.monotonic()
        self.sites: Counter[str] = Counter()
        self.measuring = False
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="stall-watch")

    async def heartbeat(self) -> None:
        self._thread.start()
        try:
            while True:
                self.beat = time.monotonic()
                await asyncio.sleep(0.01)
        finally:
            self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            if not self.measuring or time.monotonic() - self.beat < 0.1:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            here: list[str] = []
            while frame is not None and len(here) < 3:
                name = frame.f_code.co_filename
                if "/releasegate/" in name:
                    here.append(f"{Path(name).parent.name}/{Path(name).name}:{frame.f_lineno} "
                                f"{frame.f_code.co_name}")
                frame = frame.f_back
            self.sites[" < ".join(here) or "(outside releasegate)"] += 1

    def report(self, top: int = 8) -> None:
        total = sum(self.sites.values())
        print(f"loop stalls over 100 ms: {total * 20} ms sampled in all; where (innermost releasegate frames):")
        for site, n in self.sites.most_common(top):
            print(f"  {n * 20:7d} ms  {site}")


class GcWatch:
    """How long the garbage collector stopped everything, per generation (only while ``measuring``): a full
    collection holds the GIL throughout, so no thread, not even StallWatch's, runs meanwhile."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.measuring = False
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        elif self.measuring:
            self.pauses[info["generation"]].append(time.perf_counter() - self._began)

    def report(self) -> None:
        print("garbage collections: " + ", ".join(
            f"gen{g} {len(v)} x, max {max(v, default=0) * 1000:.0f} ms, total {sum(v) * 1000:.0f} ms"
            for g, v in self.pauses.items()))


def write_spec(root: Path, n: int, hold: float) -> Path:
    path = root / f"svc{n:04d}.yaml"
    path.write_text(f"""service: svc{n:04d}
platform: {{command: "python3 -m http.server {{port}}", instances: 1}}
router: {{kind: builtin, listen: "127.0.0.1:{free_port()}"}}
strategy:
  canary:
    steps: [{{weight: 50, pause: {int(hold)}s}}]
analysis:
  interval: 1s
  post_promotion: 0s
  rules: [{{metric: error_rate, max: 0.05, for: 5s}}]
""")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def client(url: str, token: str, seconds: float, out: str, ready: Any) -> None:
    """The API's client, in a process of its own (as real clients are: in the server's process it would compete
    with the event loop for the GIL): ``GET /api/v1/rollouts`` five times a second for ``seconds``, and ``GET
    /metrics`` every 2 s; the latencies go to the JSON file ``out``."""
    took: list[float] = []
    at: list[float] = []  # when each list request began (time.monotonic(): one clock for both processes)
    scraped: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        for path in ("/api/v1/rollouts", "/metrics"):  # the first of each opens what it keeps: not measured
            http.get(path)
        ready.set()
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            n += 1
            for path, into in (("/api/v1/rollouts", took), ("/metrics", scraped)) if n % 10 == 0 else \
                    (("/api/v1/rollouts", took),):
                t0 = time.perf_counter()
                if into is took:
                    at.append(time.monotonic())
                answer = http.get(path)
                into.append(time.perf_counter() - t0)
                if answer.status_code != 200:
                    raise SystemExit(f"GET {path} answered {answer.status_code}: {answer.text[:200]}")
            time.sleep(0.2)
    Path(out).write_text(json.dumps({"took": took, "at": at, "scraped": scraped}))


async def run(rollouts: int, seconds: float, tmp: Path) -> None:
    state, specs = tmp / "state", tmp / "specs"
    specs.mkdir()
    hold = seconds + 60 + rollouts * 0.1  # all still in their canary step when the window ends
    paths = [write_spec(specs, n, hold) for n in range(rollouts)]
    clock = LagClock()
    stalls = StallWatch()
    collections = GcWatch()
    beating = asyncio.create_task(stalls.heartbeat())
    app = create_app(state, spec_root=specs, adopt=False)
    port = free_port()
    served: list[float] = []  # how long the app took for each list request, inside the server (no network)

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        t0 = time.perf_counter()
        await app(scope, receive, send)
        if clock.measuring and scope["type"] == "http" and scope["path"] == "/api/v1/rollouts":
            served.append(time.perf_counter() - t0)
    server = uvicorn.Server(uvicorn.Config(timed, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    supervisor = SimSupervisor(state, clock)
    supervisor.start()  # its lease keeper renews and its scan looks for rollouts to adopt, as a server's do
    token = issue(state, "bench", "viewer")

    gate = asyncio.Semaphore(20)

    async def one(path: Path, version: str) -> str:
        async with gate:
            for _ in range(5):
                try:
                    return await supervisor.deploy(path, version, "bench", "production", False)
                except UserError as exc:  # another program took the (unused) router port meanwhile: a new one
                    if "is taken by another program" not in str(exc):
                        raise
                    write_spec(path.parent, int(path.stem[3:]), hold)
            raise SystemExit(f"{path}: no free router port after 5 tries")
    await asyncio.gather(*(one(p, "1.0.0") for p in paths))  # the first deploy of a service: straight to 100 %
    await asyncio.gather(*supervisor.tasks.values())
    t0 = time.monotonic()
    await asyncio.gather(*(one(p, "2.0.0") for p in paths))  # the canaries measured
    print(f"started {rollouts} rollouts in {time.monotonic() - t0:.1f} s", flush=True)
    await asyncio.sleep(5)  # every controller reaches its canary step and its analysis rhythm
    if supervisor.active() != rollouts:
        failed = [t.exception() or t.result() for t in supervisor.tasks.values() if t.done() and not t.cancelled()]
        print(f"first one that ended early: {failed[0] if failed else None!r}")
        raise SystemExit(f"only {supervisor.active()} of {rollouts} rollouts are active; see {state}")

    proc = psutil.Process()
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    out = tmp / "client.json"
    child = spawn.Process(target=client, args=(f"http://127.0.0.1:{port}", token, seconds, str(out), ready))
    child.start()
    if not await asyncio.to_thread(ready.wait, 120):
        raise SystemExit("the API client process did not start within 120 s")
    cpu0, wall0 = proc.cpu_times(), time.monotonic()
    start = wall0
    clock.measuring = stalls.measuring = collections.measuring = True
    await asyncio.sleep(seconds)
    clock.measuring = stalls.measuring = collections.measuring = False
    beating.cancel()
    cpu1, wall = proc.cpu_times(), time.monotonic() - wall0
    await asyncio.to_thread(child.join, 120)
    if child.exitcode != 0 or not out.exists():
        raise SystemExit(f"the API client process failed (exit {child.exitcode}); its error is above")
    answers = json.loads(out.read_text())
    took, scraped = answers["took"], answers["scraped"]
    rss_mb = proc.memory_info().rss / 2**20
    active = supervisor.active()
    await supervisor.shutdown()
    server.should_exit = True
    await serving

    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
    figures = {"lag_p99_ms": p99(clock.lags) * 1000, "rss_mb": rss_mb, "cpu_cores": cpu,
               "list_p99_ms": p99(took) * 1000}
    print(f"window {seconds:.0f} s, {active} rollouts active at its end, {len(clock.lags)} wake-ups, "
          f"{len(took)} list requests")
    for key, value in figures.items():
        verdict = "ok" if value < TARGETS[key] else "MISSED"
        print(f"  {key:12} {value:9.1f}   target < {TARGETS[key]:g}   {verdict}")
    print(f"  {'metrics_p99_ms':12} {p99(scraped) * 1000:7.1f}   (GET /metrics, every 2 s; no target)")
    print(f"  list in the app ms: p50 {median(served) * 1000:.1f}, p99 {p99(served) * 1000:.1f}, max "
          f"{max(served) * 1000:.1f} (the rest of the client's figure is the network, the client and the loop's "
          "queue)")
    print(f"  list latency ms: p50 {median(took) * 1000:.1f}, max {max(took) * 1000:.1f}; the five slowest at "
          "s into the window: " + ", ".join(f"{at - start:.1f}" for _, at in sorted(
              zip(took, answers["at"], strict=True))[-5:]))
    stalls.report()
    collections.report()
    bursts: list[list[tuple[float, float]]] = []
    for at, late in clock.late_at:
        if bursts and at - bursts[-1][-1][0] < 0.5:
            bursts[-1].append((at, late))
        else:
            bursts.append([(at, late)])
    print(f"wake-ups over 100 ms late: {len(clock.late_at)}, in {len(bursts)} burst(s) (at s into the window: "
          "count, worst ms):")
    print("  " + ", ".join(f"{b[0][0] - start:.1f}: {len(b)}, {max(x for _, x in b) * 1000:.0f}"
                           for b in bursts[:30]))
    print(f"cpu: {figures['cpu_cores']:.2f} cores (the server process's CPU time / wall time)")
    print(f"rollouts: {rollouts}, lag_p99_ms: {figures['lag_p99_ms']:.1f}, rss_mb: {rss_mb:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000, help="concurrent rollouts (default 1000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring window in seconds (default 60)")
    args = parser.parse_args()
    if args.rollouts < 1 or args.seconds <= 0:
        raise SystemExit("bench_server_scale: --rollouts must be at least 1 and --seconds above 0, e.g. "
                         "--rollouts 100 --seconds 10")
    with tempfile.TemporaryDirectory(prefix="rg-scale-") as tmp:
        os.chdir(tmp)
        asyncio.run(run(args.rollouts, args.seconds, Path(tmp)))


if __name__ == "__main__":
    main()
