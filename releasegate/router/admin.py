"""The admin API: JSON over a tiny HTTP/1.1 handler on loopback, for the controller and for people with curl.

It is not the hot path, so it uses asyncio streams; it is hand-written so the router process needs no web
framework. A route change is persisted before it is applied: the answer to a PUT means "this is on disk and
being served", which is what the controller's crash recovery relies on.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from releasegate.providers.base import Routes
from releasegate.router.core import Core
from releasegate.router.exposition import CONTENT_TYPE, render_metrics
from releasegate.router.routes_file import save_routes

MAX_BODY = 1 << 20
MAX_WINDOW = 3600.0


class PlainText(str):
    """A payload sent as it is (the Prometheus exposition), not as JSON."""

    __slots__ = ()


class Admin:
    def __init__(self, core: Core, listen: str = "", admin: str = "") -> None:
        self.core = core
        self.listen = listen
        self.admin = admin
        self.started_at = time.time()
        self.lock = asyncio.Lock()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3:
                    await self._write(writer, 400, {"error": "malformed request line"}, False)
                    return
                method, target, version = parts
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = headers.get("content-length", "0")
                if not length.isdigit() or int(length) > MAX_BODY:
                    await self._write(writer, 400, {"error": "invalid or too large Content-Length"}, False)
                    return
                body = await reader.readexactly(int(length)) if int(length) else b""
                keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
                status, payload = await self.dispatch(method, target, body)
                await self._write(writer, status, payload, keep)
                if not keep:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            return
        finally:
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, status: int, payload: object, keep: bool) -> None:
        if isinstance(payload, PlainText):
            body, ctype = payload.encode(), CONTENT_TYPE
        else:
            body, ctype = json.dumps(payload).encode(), "application/json"
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  409: "Conflict", 500: "Internal Server Error"}.get(status, "OK")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n"
                     .encode() + body)
        await writer.drain()

    async def dispatch(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query)
        allowed = {"/health": ("GET",), "/routes": ("GET", "PUT"), "/stats": ("GET",), "/metrics": ("GET",)}
        if path not in allowed:
            return 404, {"error": f"no such endpoint {path}; try /health, /routes, /stats or /metrics"}
        if method not in allowed[path]:
            return 405, {"error": f"{method} is not allowed on {path}"}
        if path == "/health":
            return 200, self.health()
        if path == "/stats":
            return self.stats(query)
        if path == "/metrics":
            return 200, PlainText(render_metrics(self.core.service, self.core.stats, self.core.inflight()))
        if method == "GET":
            return 200, self.routes()
        return await self.put_routes(body)

    def health(self) -> dict[str, Any]:
        return {"ok": True, "service": self.core.service, "pid": os.getpid(), "listen": self.listen,
                "admin": self.admin, "generation": self.core.table.generation,
                "started_at": self.started_at, "active_requests": self.core.active_requests()}

    def routes(self) -> dict[str, Any]:
        table = self.core.table
        return {"service": self.core.service, **table.routes.to_json(), "generation": table.generation,
                "inflight": self.core.inflight()}

    def stats(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        raw = query.get("window", ["10"])[-1]
        try:
            window = float(raw)
        except ValueError:
            window = math.nan
        if not math.isfinite(window) or window <= 0:
            return 400, {"error": f"window must be a positive number of seconds, got {raw!r}"}
        version = query.get("version", [None])[-1]
        snap = self.core.stats.snapshot(min(window, MAX_WINDOW), version, self.core.table.version_names(),
                                        self.core.waiting())
        return 200, snap

    async def put_routes(self, body: bytes) -> tuple[int, Any]:
        try:
            data = json.loads(body or b"null")
            routes = Routes.from_json(data)
        except ValueError as exc:
            return 400, {"error": f"invalid routes: {exc}"}
        service = data.get("service")
        if service is not None and service != self.core.service:
            return 409, {"error": f"this router serves {self.core.service!r}, not {service!r}"}
        async with self.lock:
            generation = self.core.table.generation + 1
            try:
                save_routes(self.core.config.routes_file, self.core.service, routes, generation)
            except OSError as exc:
                return 500, {"error": f"cannot persist the routes to {self.core.config.routes_file}: "
                                      f"{exc.strerror or exc}; nothing changed"}
            self.core.apply(routes, generation)
        return 200, self.routes()
