#!/usr/bin/env python3
"""Benchmark: what HAProxy's per-request ring log costs HAProxy, and what following it costs releasegate.

Two HAProxy processes (``nbthread 1`` each, so the two compare like for like on a shared 2-core machine) serve the
configuration ``releasegate.providers.routers.haproxy.render_config`` writes, steered through the runtime API to a
50/50 split over two backend ports (an nginx answering a fixed 6-byte 200, as in bench_router.py): one as rendered
(every request logged into the ring), one with the two log lines of its frontend removed. wrk (``-t1 -c32``, keep-
alive) runs interleaved rounds against three targets, best round reported: ``off`` (no log), ``on`` (the ring
log, nobody reading it: HAProxy's own cost) and ``on+reader`` (the metric source's ``RingReader`` following the
ring in its thread, as during a rollout: what a user of the machine sees, since the reader's CPU competes with
HAProxy, wrk and the backend for the same 2 cores). Besides requests per second, it reports the CPU time HAProxy
spent per request (from /proc, via psutil), which a busy shared machine disturbs much less than throughput, and,
for the reader, the lines it counted, the CPU time this process spent meanwhile (the reader is the only thing it
runs then) per 1,000 requests, and the lines HAProxy dropped because the reader fell behind.

The last line is the key figure: ``haproxy with/without the ring log: throughput ratio X.XX`` (on+reader / off).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_router import ensure_tools, free_port, nginx_conf, run_wrk, stop_all, wait_port  # noqa: E402
from releasegate.providers.base import Routes, VersionRoute  # noqa: E402
from releasegate.providers.metrics.haproxy import HaproxyStatsMetrics  # noqa: E402
from releasegate.providers.metrics.haproxy_ring import command  # noqa: E402
from releasegate.providers.routers.haproxy import HaproxyRouter, render_config  # noqa: E402
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec  # noqa: E402

DURATION = int(os.environ.get("BENCH_DURATION", "12"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def proxy(tmp: Path, name: str, ring: bool) -> HaproxyRouter:
    """The rendered configuration (with ``nbthread 1``), or the same without the frontend's two log lines."""
    spec = HaproxyRouterSpec(kind="haproxy", listen=f"127.0.0.1:{free_port()}", config_file=str(tmp / f"{name}.cfg"),
                             stats_socket=str(tmp / f"{name}.sock"), slots=1)
    text = render_config(spec, "shop").replace("global\n", "global\n    nbthread 1\n", 1)
    if not ring:
        text = "\n".join(line for line in text.splitlines() if "ring@" not in line and "log-format" not in line)
    Path(spec.config_file).write_text(text + "\n")
    return HaproxyRouter(spec, "shop")


def cpu_of(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def dropped(router: HaproxyRouter) -> int:
    found = re.search(rf"{router.ring}\s*:\s*type=buffer, (\d+) dropped", command(router.socket, "show events"))
    return int(found.group(1)) if found else -1


def main() -> int:
    nginx, wrk = ensure_tools()
    if not Path(HAPROXY).exists():
        print("bench: haproxy is missing (apt-get install -y haproxy)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="rg-bench-ring-"))
    procs: list[subprocess.Popen[bytes]] = []
    be1, be2 = free_port(), free_port()
    try:
        backend = nginx_conf(tmp, "backend", f"""
  server {{ listen 127.0.0.1:{be1} backlog=4096; listen 127.0.0.1:{be2} backlog=4096;
           location / {{ return 200 "hello\\n"; }} }}""")
        procs.append(subprocess.Popen([nginx, "-c", str(backend), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        wait_port(be1, procs[-1], "backend")
        routers = {ring: proxy(tmp, "ring" if ring else "noring", ring) for ring in (True, False)}
        pids = {}
        for ring, router in routers.items():
            p = subprocess.Popen([HAPROXY, "-db", "-f", str(router.config_file)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            procs.append(p)
            pids[ring] = p.pid
            wait_port(int(router.spec.listen.rsplit(":", 1)[1]), p, f"haproxy ring={ring}")
            asyncio.run(router.set_routes("shop", Routes((VersionRoute("v2", 50, (f"127.0.0.1:{be2}",)),
                                                          VersionRoute("v1", 50, (f"127.0.0.1:{be1}",))))))
        ports = {ring: int(r.spec.listen.rsplit(":", 1)[1]) for ring, r in routers.items()}
        for port in ports.values():
            run_wrk(wrk, port, 1)  # warm-up
        targets = {"off": False, "on": True, "on+reader": True}  # name -> the ring-logging haproxy?
        best: dict[str, float] = {}
        cpu: dict[str, list[float]] = {name: [0.0, 0.0] for name in targets}  # haproxy seconds, requests
        me = psutil.Process()
        spent = 0.0
        lines = drops = sessions = skipped = 0
        p50 = p99 = 0.0
        seconds = DURATION // ROUNDS
        for _ in range(ROUNDS):
            for name, ring in targets.items():
                before = cpu_of(pids[ring])
                metrics = HaproxyStatsMetrics(routers[True], ring=True) if name == "on+reader" else None
                reader = metrics.ring if metrics is not None else None
                if metrics is not None and reader is not None:
                    metrics.start()
                    while reader.sessions == 0:
                        time.sleep(0.01)
                    dropped_before = dropped(routers[True])
                mine = me.cpu_times()
                rps, _ = run_wrk(wrk, ports[ring], seconds)
                cpu[name][0] += cpu_of(pids[ring]) - before
                cpu[name][1] += rps * seconds
                best[name] = max(best.get(name, 0.0), rps)
                if metrics is not None and reader is not None:  # let the reader drain, then charge it this CPU
                    deadline = time.monotonic() + 10
                    while reader.lines < rps * seconds * 0.99 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    after = me.cpu_times()
                    spent += after.user + after.system - mine.user - mine.system
                    lines += reader.lines
                    sessions += reader.sessions
                    skipped += reader.skipped
                    drops += dropped(routers[True]) - dropped_before
                    window = reader.window("v1", 3600, time.time())
                    if window is not None:
                        p50, p99 = window["latency_p50"] or 0.0, window["latency_p99"] or 0.0
                    asyncio.run(metrics.close())
        print(f"machine: {os.cpu_count()} CPUs, loopback; haproxy nbthread 1 per proxy; wrk -t1 -c32 keep-alive, "
              f"{ROUNDS} interleaved rounds of {seconds}s per target (best shown)")
        us = {name: cpu[name][0] / max(cpu[name][1], 1) * 1e6 for name in targets}
        for name in targets:
            print(f"ring log {name:<9} {best[name]:>9.0f} req/s (ratio to off {best[name] / best['off']:.2f}); "
                  f"haproxy CPU per request {us[name]:.1f} us ({us[name] / us['off'] - 1:+.0%})")
        print(f"reader: {lines} lines counted in {sessions} session(s) ({skipped} skipped), {drops} dropped by "
              f"haproxy; {spent / max(lines, 1) * 1e6:.2f} ms CPU per 1,000 requests; v1 p50/p99 through haproxy "
              f"{p50 * 1000:.2f}/{p99 * 1000:.2f} ms")
        print(f"haproxy with/without the ring log: throughput ratio {best['on+reader'] / best['off']:.2f}")
        return 0
    finally:
        stop_all(procs, tmp)


if __name__ == "__main__":
    sys.exit(main())
