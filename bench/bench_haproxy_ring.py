#!/usr/bin/env python3
"""Benchmark: what HAProxy's per-request ring log costs HAProxy, and what following it costs releasegate.

Two HAProxy processes (``nbthread 1`` each, so the two compare like for like on a shared 2-core machine) serve the
configuration ``releasegate.providers.routers.haproxy.render_config`` writes, steered through the runtime API to a
50/50 split over two backend ports (an nginx answering a fixed 6-byte 200, as in bench_router.py): one as rendered
(every request logged into the ring), one with the two log lines of its frontend removed. wrk (``-t1 -c32``, keep-
alive) runs interleaved rounds against both, best round reported. Besides requests per second, it reports the CPU
time HAProxy spent per request (from /proc, via psutil), which a busy shared machine disturbs much less than
throughput.

While wrk runs against the logging proxy, the metric source's ``RingReader`` follows the ring in its thread, as
during a rollout: the bench reports the lines it counted, the CPU time this process spent meanwhile (the reader is
the only thing it runs then) per 1,000 requests, and the lines HAProxy dropped because the reader fell behind.

The last line is the key figure: ``haproxy with/without the ring log: throughput ratio X.XX``.
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
        metrics = HaproxyStatsMetrics(routers[True], ring=True)
        metrics.start()
        reader = metrics.ring
        assert reader is not None
        best: dict[bool, float] = {}
        cpu: dict[bool, list[float]] = {True: [0.0, 0.0], False: [0.0, 0.0]}  # haproxy seconds, requests
        me = psutil.Process()
        spent = 0.0
        lines = 0
        seconds = DURATION // ROUNDS
        for _ in range(ROUNDS):
            for ring, port in ports.items():
                before = cpu_of(pids[ring])
                mine, counted = me.cpu_times(), reader.lines
                rps, _ = run_wrk(wrk, port, seconds)
                if ring:  # let the reader drain what is left, then charge this process's CPU to it
                    deadline = time.monotonic() + 10
                    while reader.lines - counted < rps * seconds * 0.99 and time.monotonic() < deadline:
                        time.sleep(0.05)
                    after = me.cpu_times()
                    spent += after.user + after.system - mine.user - mine.system
                    lines += reader.lines - counted
                cpu[ring][0] += cpu_of(pids[ring]) - before
                cpu[ring][1] += rps * seconds
                best[ring] = max(best.get(ring, 0.0), rps)
        drops = dropped(routers[True])
        asyncio.run(metrics.close())
        window = reader.window("v1", 3600, time.time())
        p50, p99 = (window["latency_p50"] or 0.0, window["latency_p99"] or 0.0) if window else (0.0, 0.0)
        print(f"machine: {os.cpu_count()} CPUs, loopback; haproxy nbthread 1 per proxy; wrk -t1 -c32 keep-alive, "
              f"{ROUNDS} interleaved rounds of {seconds}s per target (best shown)")
        us = {ring: cpu[ring][0] / max(cpu[ring][1], 1) * 1e6 for ring in (True, False)}
        print(f"ring log off {best[False]:>9.0f} req/s, on {best[True]:>9.0f} req/s, ratio "
              f"{best[True] / best[False]:.2f}; haproxy CPU per request: off {us[False]:.1f} us, on {us[True]:.1f} us "
              f"({us[True] / us[False] - 1:+.0%})")
        print(f"reader: {lines} lines counted ({reader.sessions} session(s), {reader.skipped} skipped), "
              f"{drops} dropped by haproxy; {spent / max(lines, 1) * 1e6:.2f} ms CPU per 1,000 requests; "
              f"v1 p50/p99 through haproxy {p50 * 1000:.2f}/{p99 * 1000:.2f} ms")
        print(f"haproxy with/without the ring log: throughput ratio {best[True] / best[False]:.2f}")
        return 0
    finally:
        stop_all(procs, tmp)


if __name__ == "__main__":
    sys.exit(main())
