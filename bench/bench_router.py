#!/usr/bin/env python3
"""Benchmark: the built-in router against nginx (1 worker) as a reverse proxy, on loopback.

Three targets, the same fast backend behind all of them (an nginx server block answering a fixed 6-byte 200 on two
ports, one per version):

* direct   - wrk straight at the backend;
* nginx    - one nginx worker, upstream keep-alive, 50/50 weighted across the two backend ports;
* router   - releasegate's router, two versions 50/50 (sticky cookie mode: wrk sends no cookie, so every
             request also gets a bucket drawn and a Set-Cookie added), statistics on (they always are).

Throughput: ``wrk -t1 -c32`` (keep-alive), 3 interleaved rounds of 4 s per target, best round reported.
Added latency: an open-loop paced client at a fixed 1,000 rps over 16 keep-alive connections, p50 of each target
minus p50 direct.

Prints a table, then as the last line ``router/nginx throughput ratio: X.XX``. Stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

DURATION = int(os.environ.get("BENCH_DURATION", "12"))
"""Seconds of wrk per target, split into ROUNDS interleaved slices."""
ROUNDS = 3
CONNECTIONS = 32
RATE = 1000
RATE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tools() -> tuple[str, str]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    wrk = shutil.which("wrk")
    if nginx is None or wrk is None:
        print("installing nginx and wrk with apt-get ...", file=sys.stderr)
        subprocess.run(["apt-get", "update"], check=False, stdout=subprocess.DEVNULL)
        for pkgs in (["nginx-light", "wrk"], ["nginx", "wrk"]):
            if subprocess.run(["apt-get", "install", "-y", *pkgs], check=False,
                              stdout=subprocess.DEVNULL).returncode == 0:
                break
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        wrk = shutil.which("wrk")
    if not os.path.exists(nginx) or wrk is None:
        sys.exit("bench: nginx and wrk are required (apt-get install -y nginx-light wrk)")
    return nginx, wrk


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {what} exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"bench: {what} did not listen on {port} within {timeout}s")


def nginx_conf(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.conf"
    temp = tmp / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    path.write_text(f"""
worker_processes 1;
daemon off;
error_log {tmp}/{name}.err warn;
pid {tmp}/{name}.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fcgi;
  uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
  keepalive_requests 1000000;
{body}
}}
""")
    return path


def run_wrk(wrk: str, port: int, seconds: int) -> tuple[float, str]:
    out = subprocess.run([wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    lat = re.search(r"Latency\s+(\S+)", out)
    if rps is None:
        sys.exit(f"bench: could not read wrk's output:\n{out}")
    return float(rps.group(1)), lat.group(1) if lat else "?"


class _Conn(asyncio.Protocol):
    """One keep-alive connection of the paced client; knows only Content-Length framing (enough here)."""

    def __init__(self, done: asyncio.Queue[_Conn], samples: list[float], total: int,
                 finished: asyncio.Event) -> None:
        self.done, self.samples, self.total, self.finished = done, samples, total, finished
        self.buf = b""
        self.t0 = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def send(self, request: bytes) -> None:
        self.t0 = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", self.buf[:end])
        length = int(m.group(1)) if m else 0
        if len(self.buf) < end + 4 + length:
            return
        self.samples.append(time.perf_counter() - self.t0)
        self.buf = self.buf[end + 4 + length:]
        self.done.put_nowait(self)
        if len(self.samples) >= self.total:
            self.finished.set()


async def paced(port: int, rate: int, seconds: float) -> list[float]:
    """Open loop: request i is due at t0 + i/rate whatever happened to the previous ones."""
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    free: asyncio.Queue[_Conn] = asyncio.Queue()
    conns = []
    total = int(rate * seconds)
    finished = asyncio.Event()
    for _ in range(16):
        _, c = await loop.create_connection(lambda: _Conn(free, samples, total, finished), "127.0.0.1", port)
        conns.append(c)
        free.put_nowait(c)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        conn = await free.get()
        conn.send(request)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), 5)
    for c in conns:
        assert c.transport is not None
        c.transport.close()
    return samples


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure_latency(port: int) -> tuple[float, float]:
    try:
        import uvloop

        samples = uvloop.run(paced(port, RATE, RATE_SECONDS))
    except ImportError:  # pragma: no cover
        samples = asyncio.run(paced(port, RATE, RATE_SECONDS))
    return pct(samples, 0.5), pct(samples, 0.99)


def main() -> int:
    nginx, wrk = ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="rg-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    be1, be2, px, rt = free_port(), free_port(), free_port(), free_port()
    try:
        backend_conf = nginx_conf(tmp, "backend", f"""
  server {{ listen 127.0.0.1:{be1} backlog=4096; listen 127.0.0.1:{be2} backlog=4096;
           location / {{ return 200 "hello\\n"; }} }}""")
        proxy_conf = nginx_conf(tmp, "proxy", f"""
  upstream be {{ server 127.0.0.1:{be1} weight=1; server 127.0.0.1:{be2} weight=1; keepalive 64; }}
  server {{ listen 127.0.0.1:{px} backlog=4096;
           location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
                        proxy_set_header X-Forwarded-For $remote_addr; }} }}""")
        for conf, port, what in ((backend_conf, be1, "backend nginx"), (proxy_conf, px, "proxy nginx")):
            p = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p, what)
        routes = {"versions": [{"version": "v2", "weight": 50, "backends": [f"127.0.0.1:{be2}"]},
                               {"version": "v1", "weight": 50, "backends": [f"127.0.0.1:{be1}"]}]}
        (tmp / "routes.json").write_text(json.dumps(routes))
        repo = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with open(tmp / "router.log", "wb") as log:
            router = subprocess.Popen([sys.executable, "-m", "releasegate.router", "--service", "bench",
                                       "--listen", f"127.0.0.1:{rt}", "--routes-file", str(tmp / "routes.json"),
                                       "--state-file", str(tmp / "router.state.json")],
                                      stdout=log, stderr=subprocess.STDOUT, env=env)
        procs.append(router)
        wait_port(rt, router, "router")

        targets = {"direct": be1, "nginx": px, "router": rt}
        for port in targets.values():
            run_wrk(wrk, port, 1)  # warm-up: connections, pools, caches
        # Interleaved rounds, best of each: on a shared machine a burst of someone else's work lowers one
        # slice, and interleaving keeps it from landing on one target only.
        rounds: dict[str, list[tuple[float, str]]] = {name: [] for name in targets}
        for _ in range(ROUNDS):
            for name, port in targets.items():
                rounds[name].append(run_wrk(wrk, port, DURATION // ROUNDS))
        results: dict[str, dict[str, float | str]] = {}
        for name, runs in rounds.items():
            rps, lat = max(runs)
            results[name] = {"rps": rps, "wrk_lat": lat, "runs": " / ".join(f"{r:.0f}" for r, _ in runs)}
        for name, port in targets.items():
            p50, p99 = measure_latency(port)
            results[name].update(p50=p50, p99=p99)

        state = json.loads((tmp / "router.state.json").read_text())
        token = (tmp / "bench.admin-token").read_text().strip()  # made by the router beside its routes file
        stats = subprocess.run([sys.executable, "-c", "import httpx,sys; print(httpx.get(sys.argv[1], headers="
                                "{'Authorization': 'Bearer ' + sys.stdin.read()}, trust_env=False).text)",
                                f"http://{state['admin']}/stats?window=3600"],
                               input=token, capture_output=True, text=True, timeout=30).stdout
        counted = sum(v["requests"] for v in json.loads(stats).values())

        direct = results["direct"]
        print(f"machine: {os.cpu_count()} CPUs, loopback; wrk -t1 -c{CONNECTIONS} keep-alive, {ROUNDS} interleaved "
              f"rounds of {DURATION // ROUNDS}s per target (best shown); latency: {RATE} rps paced, "
              f"{RATE_SECONDS:g}s, 16 connections")
        print(f"{'target':<8} {'req/s':>9} {'rounds':>24} {'wrk avg':>9} {'p50@1k':>9} {'p99@1k':>9} "
              f"{'added p50':>10}")
        for name, r in results.items():
            added = (float(r["p50"]) - float(direct["p50"])) * 1000
            print(f"{name:<8} {float(r['rps']):>9.0f} {r['runs']!s:>24} {r['wrk_lat']!s:>9} "
                  f"{float(r['p50']) * 1000:>7.3f}ms {float(r['p99']) * 1000:>7.3f}ms {added:>8.3f}ms")
        print(f"router statistics counted {counted} requests (both versions)")
        ratio = float(results["router"]["rps"]) / float(results["nginx"]["rps"])
        print(f"router/nginx throughput ratio: {ratio:.2f}")
        return 0
    finally:
        stop_all(procs, tmp)


def stop_all(procs: list[subprocess.Popen[bytes]], tmp: Path) -> None:
    """SIGTERM every process the bench started, newest first; SIGKILL what does not exit; remove the temp dir."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
