#!/usr/bin/env python3
"""Small misbehaving programs for the platform, checks and metrics tests, run as real processes.

Run as a script (``python tests/support/apps.py MODE --port N``), never imported: no package setup needed.

Modes:
  serve        HTTP server: /health, /json, /text, /echo, /env[?names=A,B], /version/<v> (200 when v is the
               version, else 409), /status/<code>, /slow?s=<sec>,
               /flaky/<key>/<n> (503 for the first n hits of key, then 200),
               /exit/<code> (answers, then exits with that code)
  ignore-term  listens, prints a line on SIGTERM and keeps running (only SIGKILL stops it)
  spawn-child  listens and starts a child in its process group; writes the child's pid to --pidfile
  burn         listens and keeps one core busy
  burn-half    listens and keeps a core busy about half the time (6 ms of work, 4 ms asleep)
  exit         prints --message to stderr and exits with --code at once
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION = os.environ.get("RELEASEGATE_VERSION", "test")
_hits: Counter[str] = Counter()
_hits_lock = threading.Lock()
_sockets: list[socket.socket] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes; without this, Nagle and delayed ACKs add ~40 ms per answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._route(b"")

    def do_HEAD(self) -> None:
        self._route(b"")

    def do_POST(self) -> None:
        self._route(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _route(self, body: bytes) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path == "/health":
            self._json(200, {"status": "healthy", "version": VERSION, "checks": {"db": "ok", "cache": "ok"}})
        elif url.path == "/json":
            self._json(200, {"version": VERSION, "items": [1, 2, 3], "meta": {"region": "local", "ok": True}})
        elif url.path == "/text":
            self._send(200, b"plain text, not json", "text/plain")
        elif url.path == "/echo":
            x_test = self.headers.get("X-Test")
            self._json(200, {"method": self.command, "body": body.decode(), "x_test": x_test})
        elif url.path == "/env":  # ?names=A,B adds those variables
            names = [n for n in parse_qs(url.query).get("names", [""])[0].split(",") if n]
            keys = ("PORT", "RELEASEGATE_VERSION", "RELEASEGATE_SERVICE", "EXTRA", *names)
            self._json(200, {"cwd": os.getcwd(), **{k: os.environ.get(k) for k in keys}})
        elif parts[0] == "version" and len(parts) == 2:  # 200 only for this instance's own version
            self._json(200 if parts[1] == VERSION else 409, {"asked": parts[1], "version": VERSION})
        elif parts[0] == "status" and len(parts) == 2:
            self._json(int(parts[1]), {"code": int(parts[1])})
        elif url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
            self._json(200, {"slow": True})
        elif parts[0] == "flaky" and len(parts) == 3:
            with _hits_lock:
                _hits[parts[1]] += 1
                hit = _hits[parts[1]]
            self._json(503 if hit <= int(parts[2]) else 200, {"hit": hit, "status": "healthy"})
        elif parts[0] == "exit" and len(parts) == 2:
            self._json(200, {"exiting": int(parts[1])})
            print(f"exiting with code {parts[1]} on request", file=sys.stderr, flush=True)
            os._exit(int(parts[1]))
        else:
            self._json(404, {"error": "not found"})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def listen(port: int) -> socket.socket:
    """Bind early so the platform sees the instance as started; nobody needs to be served."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve", "ignore-term", "spawn-child", "burn", "burn-half", "exit"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")  # serve: 0.0.0.0 inside a container (bridge network)
    parser.add_argument("--pidfile")
    parser.add_argument("--code", type=int, default=1)
    parser.add_argument("--message", default="")
    args = parser.parse_args()
    if args.mode == "exit":
        print(args.message, file=sys.stderr, flush=True)
        return int(args.code)
    if args.mode == "serve":
        server = ThreadingHTTPServer((args.host, args.port), Handler)
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        print(f"serving on {args.port}", file=sys.stderr, flush=True)
        server.serve_forever(poll_interval=0.05)
        print("stopped after SIGTERM", file=sys.stderr, flush=True)
        return 0
    if args.mode == "ignore-term":
        signal.signal(signal.SIGTERM, lambda *_: print("got SIGTERM, ignoring it", file=sys.stderr,
                                                       flush=True))
    _sockets.append(listen(args.port))  # kept open until the process ends
    if args.mode == "spawn-child":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(args.pidfile, "w") as f:
            f.write(str(child.pid))
    print(f"{args.mode} on {args.port}", file=sys.stderr, flush=True)
    while True:
        if args.mode == "burn":
            sum(range(10_000))
        elif args.mode == "burn-half":
            until = time.perf_counter() + 0.006
            while time.perf_counter() < until:
                pass
            time.sleep(0.004)
        else:
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
