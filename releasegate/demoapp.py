#!/usr/bin/env python3
"""releasegate's demo service: a tiny JSON HTTP server whose versions can be told to misbehave.

Standard library only, so it runs anywhere releasegate does. Faults come from the FAULTS environment variable
and apply to the version named by RELEASEGATE_VERSION (set by the local platform), so one spec can roll out
a good version, a flaky one and a broken one without touching code:

    FAULTS='3.0.0:error_rate=1,paths=/api/orders;4.0.0:health=fail;5.0.0:error_rate=0.3,latency=0.2'

Injected errors are counted, not drawn at random: ``error_rate=0.3`` fails exactly 3 requests in 10, spread
evenly, so a run can be repeated and tells the same story every time.

See examples/demo/README.md for every knob.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DRAIN_SECONDS = 10.0


def parse_faults(text: str, version: str) -> dict[str, str]:
    """The faults for ``version``: entries for ``*`` apply to every version, an exact match overrides them."""
    found: dict[str, dict[str, str]] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        target, sep, knobs = entry.partition(":")
        if not sep:
            raise ValueError(f"FAULTS entry {entry!r} must look like VERSION:knob=value,knob=value")
        pairs = {}
        for knob in filter(None, (k.strip() for k in knobs.split(","))):
            key, eq, value = knob.partition("=")
            if not eq:
                raise ValueError(f"FAULTS knob {knob!r} must look like name=value")
            pairs[key.strip()] = value.strip()
        found.setdefault(target.strip(), {}).update(pairs)
    return {**found.get("*", {}), **found.get(version, {})}


APP_PATHS = ("/", "/api/items", "/api/orders")
KNOBS = ("error_rate", "latency", "paths", "health", "startup")


class Faults:
    def __init__(self, knobs: dict[str, str]) -> None:
        unknown = set(knobs) - set(KNOBS)
        if unknown:
            raise ValueError(f"unknown FAULTS knob(s): {', '.join(sorted(unknown))} (known: {', '.join(KNOBS)})")
        self.error_rate = float(knobs.get("error_rate", 0.0))
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate={self.error_rate:g} must be between 0 and 1")
        self.latency = float(knobs.get("latency", 0.0))
        self.paths = tuple(p.strip() for p in knobs.get("paths", "|".join(APP_PATHS)).split("|") if p.strip())
        if bad := [p for p in self.paths if p not in APP_PATHS]:
            raise ValueError(f"paths: {', '.join(bad)} is not one of the app's paths ({' | '.join(APP_PATHS)})")
        self.health_fails = knobs.get("health", "ok") == "fail"
        self.startup = float(knobs.get("startup", 0.0))
        self.seen = 0  # requests the faults applied to so far
        self.lock = threading.Lock()

    def fails_next(self) -> bool:
        """Whether the next faulted request fails: the n-th fails when error_rate * n passes a whole number,
        so exactly that share fails, spread evenly (0.5: every second one; 1/3: every third)."""
        with self.lock:
            self.seen += 1
            n = self.seen
        return math.floor(self.error_rate * n + 1e-9) > math.floor(self.error_rate * (n - 1) + 1e-9)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real service behind a proxy would use
    server_version = "releasegate-demo"
    server: DemoServer

    def log_message(self, format: str, *args: Any) -> None:  # one line per request would drown the log
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without this, Nagle and delayed ACKs add ~40 ms per answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._serve(body=True)

    def do_PUT(self) -> None:
        """``PUT /_faults`` with a body like ``error_rate=1`` changes faults at run time (DEMO_CONTROL=1 only):
        benchmarks use it to know the exact moment a running canary starts failing."""
        length = int(self.headers.get("Content-Length") or 0)
        text = self.rfile.read(length).decode(errors="replace")
        if self.path != "/_faults" or not self.server.control:
            self._send(404, {"error": "not found", "path": self.path}, True)
            return
        try:
            self.server.faults = Faults(parse_faults(f"*:{text}", self.server.version) if text.strip() else {})
        except ValueError as exc:
            self._send(400, {"error": str(exc)}, True)
            return
        self._send(200, {"faults": text}, True)

    def _serve(self, body: bool) -> None:
        srv = self.server
        with srv.lock:
            srv.active += 1
        try:
            path = self.path.split("?", 1)[0]
            version, faults = srv.version, srv.faults
            if path == "/health":
                if faults.health_fails:
                    self._send(503, {"status": "failing", "version": version}, body)
                else:
                    self._send(200, {"status": "healthy", "version": version}, body)
                return
            if path not in APP_PATHS:
                self._send(404, {"error": "not found", "path": path, "version": version}, body)
                return
            faulted = path in faults.paths
            if faulted and faults.latency > 0:
                time.sleep(faults.latency)
            if faulted and faults.error_rate > 0 and faults.fails_next():
                self._send(500, {"error": "injected fault", "path": path, "version": version}, body)
            elif path == "/":
                self._send(200, {"service": srv.service, "version": version}, body)
            elif path == "/api/orders":
                self._order(version, body)
            else:
                items = [{"id": n, "name": f"item {n}"} for n in range(1, 4)]
                self._send(200, {"version": version, "items": items}, body)
        finally:
            with srv.lock:
                srv.active -= 1

    def _order(self, version: str, body: bool) -> None:
        """POST places an order (201 with its number); GET says how many this instance has taken."""
        srv = self.server
        if self.command != "POST":
            self._send(200, {"version": version, "orders": srv.orders}, body)
            return
        with srv.lock:
            srv.orders += 1
            number = srv.orders
        self._send(201, {"version": version, "order": number}, body)

    def _send(self, status: int, payload: dict[str, Any], body: bool) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Version", self.server.version)
        if self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(data)


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not hold up the exit
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], version: str, service: str, faults: Faults) -> None:
        super().__init__(address, Handler)
        self.version, self.service, self.faults = version, service, faults
        self.lock = threading.Lock()
        self.active = 0
        self.orders = 0
        self.stopping = False
        self.control = os.environ.get("DEMO_CONTROL") == "1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--version", default=os.environ.get("RELEASEGATE_VERSION", "dev"))
    args = parser.parse_args(argv)
    service = os.environ.get("RELEASEGATE_SERVICE", "demo")
    try:
        faults = Faults(parse_faults(os.environ.get("FAULTS", ""), args.version))
    except ValueError as exc:
        print(f"demo: bad FAULTS: {exc}", file=sys.stderr)
        return 2
    if faults.startup > 0:
        time.sleep(faults.startup)
    server = DemoServer((args.host, args.port), args.version, service, faults)

    def on_term(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, which runs in this thread: ask from another one.
        server.stopping = True
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"demo {service} {args.version} listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever(poll_interval=0.2)
    deadline = time.monotonic() + DRAIN_SECONDS
    while server.active and time.monotonic() < deadline:  # let in-flight requests finish
        time.sleep(0.02)
    server.server_close()
    print(f"demo {service} {args.version} stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
