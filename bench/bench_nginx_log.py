#!/usr/bin/env python3
"""Benchmark: what the nginx router's JSON access log costs nginx, and what reading it costs releasegate.

Two nginx proxies (one worker each) serve the file ``releasegate.providers.routers.nginx.render`` writes for a
50/50 split over two backend ports (an nginx answering a fixed 6-byte 200, as in bench_router.py): one with the
access log (the default), one with ``access_log: off``. wrk (``-t1 -c32``) runs interleaved rounds against both,
best round reported, once with client keep-alive (``client_keepalive: 60s``: the most requests per second, so the
log's share is largest) and once with the default ``keepalive_timeout 0`` (a connection per request). Besides
requests per second, it reports the CPU time nginx's worker spent per request (from /proc, via psutil), which a
busy shared machine disturbs much less than throughput.

While wrk runs against the logging proxy, a ``LogTail`` reads the log once a second, as the metric source does
during an analysis: it reports the lines it counted per second, the worst read, and its cost per 1,000 lines.

The last line is the key figure: ``nginx with/without the JSON access log: throughput ratio X.XX``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_router import ensure_tools, free_port, nginx_conf, run_wrk, stop_all, wait_port  # noqa: E402
from releasegate.providers.base import Routes, VersionRoute  # noqa: E402
from releasegate.providers.metrics.nginx_log import LogTail  # noqa: E402
from releasegate.providers.routers.nginx import render  # noqa: E402
from releasegate.spec.routers_nginx import NginxRouter  # noqa: E402

DURATION = int(os.environ.get("BENCH_DURATION", "12"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def proxy_conf(tmp: Path, name: str, port: int, backends: tuple[int, int], log: bool, keepalive: str) -> Path:
    spec = NginxRouter.model_validate({
        "kind": "nginx", "listen": f"127.0.0.1:{port}", "config_file": str(tmp / f"{name}-shop.conf"),
        "client_keepalive": keepalive, **({} if log else {"access_log": "off"})})
    routes = Routes((VersionRoute("v2", 50, (f"127.0.0.1:{backends[1]}",)),
                     VersionRoute("v1", 50, (f"127.0.0.1:{backends[0]}",))))
    owned = tmp / f"{name}-shop.conf"
    owned.write_text(render("shop", routes, spec))
    return nginx_conf(tmp, name, f"  include {owned};")


def worker_cpu(master: int) -> float:
    """CPU seconds (user + system) of the master's workers so far: what the log costs nginx, whatever else the
    shared machine is doing (throughput is the ratio users feel, but it is noisy on a busy machine)."""
    total = 0.0
    for child in psutil.Process(master).children():
        times = child.cpu_times()
        total += times.user + times.system
    return total


class Reader:
    """Reads the log once a second in a thread, like the metric source in an analysis."""

    def __init__(self, path: Path) -> None:
        self.tail = LogTail(path, "shop")
        self.stop = threading.Event()
        self.reads: list[tuple[int, float]] = []  # (lines, seconds) per read
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            started = time.perf_counter()
            lines = self.tail.pump()
            self.reads.append((lines, time.perf_counter() - started))

    def __enter__(self) -> Reader:
        self.tail.pump()  # opens at the end: only what is written from now on
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def main() -> int:
    nginx, wrk = ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="rg-bench-log-"))
    procs: list[subprocess.Popen[bytes]] = []
    be1, be2 = free_port(), free_port()
    try:
        backend = nginx_conf(tmp, "backend", f"""
  server {{ listen 127.0.0.1:{be1} backlog=4096; listen 127.0.0.1:{be2} backlog=4096;
           location / {{ return 200 "hello\\n"; }} }}""")
        ports = {(log, ka): free_port() for log in (True, False) for ka in ("60s", "0")}
        confs = [(backend, be1, "backend")]
        for (log, ka), port in ports.items():
            name = f"{'log' if log else 'nolog'}-ka{ka}"
            confs.append((proxy_conf(tmp, name, port, (be1, be2), log, ka), port, name))
        for conf, port, what in confs:
            p = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p, what)
        logs = {ka: tmp / f"log-ka{ka}-shop.access.log" for ka in ("60s", "0")}
        for port in ports.values():
            run_wrk(wrk, port, 1)  # warm-up
        best: dict[tuple[bool, str], float] = {}
        cpu: dict[tuple[bool, str], list[float]] = {key: [0.0, 0.0] for key in ports}  # worker seconds, requests
        masters = {key: procs[i + 1].pid for i, key in enumerate(ports)}
        reads: list[tuple[int, float]] = []
        seconds = DURATION // ROUNDS
        for _ in range(ROUNDS):
            for (log, ka), port in ports.items():
                before = worker_cpu(masters[(log, ka)])
                if log:
                    with Reader(logs[ka]) as reader:
                        rps, _ = run_wrk(wrk, port, seconds)
                    reads += reader.reads
                else:
                    rps, _ = run_wrk(wrk, port, seconds)
                cpu[(log, ka)][0] += worker_cpu(masters[(log, ka)]) - before
                cpu[(log, ka)][1] += rps * seconds
                best[(log, ka)] = max(best.get((log, ka), 0.0), rps)
        lines = sum(n for n, _ in reads)
        spent = sum(s for _, s in reads)
        worst = max(reads, key=lambda r: r[1])
        print(f"machine: {os.cpu_count()} CPUs, loopback; nginx 1 worker per proxy; wrk -t1 -c32, {ROUNDS} "
              f"interleaved rounds of {DURATION // ROUNDS}s per target (best shown)")
        for ka in ("60s", "0"):
            on, off = best[(True, ka)], best[(False, ka)]
            us = {log: cpu[(log, ka)][0] / max(cpu[(log, ka)][1], 1) * 1e6 for log in (True, False)}
            print(f"client keep-alive {ka:>3}: log off {off:>9.0f} req/s, log on {on:>9.0f} req/s, "
                  f"ratio {on / off:.2f}; nginx worker CPU per request: off {us[False]:.1f} us, "
                  f"on {us[True]:.1f} us ({us[True] / us[False] - 1:+.0%})")
        print(f"tail: {len(reads)} reads, {lines} lines ({lines / max(len(reads), 1):.0f} per 1 s read), "
              f"worst read {worst[0]} lines in {worst[1] * 1000:.1f} ms; "
              f"{spent / max(lines, 1) * 1e6:.2f} ms per 1,000 lines")
        ratio = best[(True, "60s")] / best[(False, "60s")]
        print(f"nginx with/without the JSON access log: throughput ratio {ratio:.2f}")
        return 0
    finally:
        stop_all(procs, tmp)


if __name__ == "__main__":
    sys.exit(main())
