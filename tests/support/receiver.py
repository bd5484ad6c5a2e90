"""A webhook receiver on loopback that records what apprise's json:// plugin posts.

Tests point notification targets at it instead of Slack or PagerDuty: it can fail the first N requests (to exercise
retries) or hold every request without answering (to prove a dead endpoint never blocks a rollout).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """``with Receiver(fail_first=2) as r: ... r.url`` -> ``json://127.0.0.1:PORT/hook``; ``r.received`` lists the
    requests answered 200, ``r.failed`` counts those answered 500."""

    def __init__(self, fail_first: int = 0, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.hang = hang
        self.received: list[Received] = []
        self.failed = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "hook", query: str = "") -> str:
        return f"json://127.0.0.1:{self.port}/{path}" + (f"?{query}" if query else "")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The JSON bodies received, optionally only those whose ``event`` field is ``kind``."""
        with self._lock:
            return [r.body for r in self.received if kind is None or r.body.get("event") == kind]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if outer.hang:
                    outer._release.wait(30)
                    return
                with outer._lock:
                    if outer.failed < outer.fail_first:
                        outer.failed += 1
                        status = 500
                    else:
                        outer.received.append(Received(self.path, json.loads(raw or b"{}"), dict(self.headers)))
                        status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
