"""The admin API: JSON over a tiny HTTP/1.1 handler on loopback, for the controller and for people with curl.

It is not the hot path, so it uses asyncio streams; it is hand-written so the router process needs no web
framework. A route change is persisted before it is applied: the answer to a PUT means "this is on disk and
being served", which is what the controller's crash recovery relies on.

Every request but ``GET /health`` (a liveness probe: service, pid, addresses, generation) and ``GET /metrics``
(Prometheus) must carry ``Authorization: Bearer <token>`` with the router's token (releasegate.router.adminauth);
anything else gets 401 before its body is read, and changes nothing. Each applied ``PUT /routes`` is first
recorded in the change log with the name the client gives (``X-Releasegate-Actor``), the local account the kernel
says opened the connection, and the routes before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from releasegate.providers.base import Routes
from releasegate.router.adminauth import bearer_matches, clean_actor, peer_uid, user_name
from releasegate.router.core import Core
from releasegate.router.exposition import CONTENT_TYPE, render_metrics
from releasegate.router.routes_file import append_change, recent_changes, save_routes

MAX_BODY = 1 << 20
MAX_WINDOW = 3600.0
HEAD_TIMEOUT = 30.0  # a request head (or the next one on a kept-alive connection) must arrive within this
BODY_TIMEOUT = 10.0
DISCARD_MAX = 65536
OPEN = frozenset({("GET", "/health"), ("GET", "/metrics")})
"""What answers without the token: a liveness probe and the Prometheus scrape; neither changes anything."""
ACTOR_HEADER = "x-releasegate-actor"


class PlainText(str):
    """A payload sent as it is (the Prometheus exposition), not as JSON."""

    __slots__ = ()


class Admin:
    def __init__(self, core: Core, token: str, listen: str = "", admin: str = "") -> None:
        self.core = core
        self.token = token
        self.listen = listen
        self.admin = admin
        self.started_at = time.time()
        self.lock = asyncio.Lock()
        self.last_change: dict[str, Any] | None = None
        self.fence: tuple[str, int] | None = None  # the newest change's (rollout, lease token): see put_routes
        for record in reversed(recent_changes(core.config.changes_path, 50)):
            if self.fence is None and "failed" not in record:
                self.fence = _fence(record.get("fence"))
            if self.last_change is None and record.get("generation") == core.table.generation and \
                    "failed" not in record:
                self.last_change = _summary(record)

    def _unauthorized(self) -> dict[str, Any]:
        return {"error": "this admin API needs the router's token: send 'Authorization: Bearer TOKEN' with the "
                         f"token in {self.core.config.token_path} (readable only by the account that started "
                         "the router)"}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(HEAD_TIMEOUT):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, TimeoutError):
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
                if (method, _path(target)) not in OPEN and \
                        not bearer_matches(headers.get("authorization", ""), self.token):
                    # Answered before the body is read: nothing of an unauthenticated request is looked at.
                    await self._write(writer, 401, self._unauthorized(), False)
                    await _discard(reader, headers.get("content-length", ""))
                    return
                length = headers.get("content-length", "0")
                if not length.isdigit() or int(length) > MAX_BODY:
                    await self._write(writer, 400, {"error": "invalid or too large Content-Length"}, False)
                    return
                async with asyncio.timeout(BODY_TIMEOUT):
                    body = await reader.readexactly(int(length)) if int(length) else b""
                keep = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
                who = Caller(clean_actor(headers.get(ACTOR_HEADER, "")), writer.get_extra_info("peername"),
                             writer.get_extra_info("sockname"))
                status, payload = await self.dispatch(method, target, body, who)
                await self._write(writer, status, payload, keep)
                if not keep:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError, TimeoutError):
            return
        finally:
            writer.close()

    async def _write(self, writer: asyncio.StreamWriter, status: int, payload: object, keep: bool) -> None:
        if isinstance(payload, PlainText):
            body, ctype = payload.encode(), CONTENT_TYPE
        else:
            body, ctype = json.dumps(payload).encode(), "application/json"
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                  409: "Conflict", 500: "Internal Server Error"}.get(status, "OK")
        challenge = 'WWW-Authenticate: Bearer realm="releasegate-router"\r\n' if status == 401 else ""
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n{challenge}"
                     f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n"
                     .encode() + body)
        await writer.drain()

    async def dispatch(self, method: str, target: str, body: bytes, who: Caller | None = None) -> tuple[int, Any]:
        """Answer an authenticated request (or one of OPEN); ``who`` made it."""
        url = urlsplit(target)
        path = _path(target)
        query = parse_qs(url.query)
        allowed = {"/health": ("GET",), "/routes": ("GET", "PUT"), "/stats": ("GET",), "/totals": ("GET",),
                   "/metrics": ("GET",)}
        if path not in allowed:
            return 404, {"error": f"no such endpoint {path}; try /health, /routes, /stats, /totals or /metrics"}
        if method not in allowed[path]:
            return 405, {"error": f"{method} is not allowed on {path}"}
        if path == "/health":
            return 200, self.health()
        if path == "/stats":
            return self.stats(query)
        if path == "/totals":  # counts since each version's first request; ``started_at`` tells a restart apart
            return 200, {"started_at": self.started_at,
                         "versions": self.core.stats.totals(self.core.table.version_names())}
        if path == "/metrics":
            return 200, PlainText(render_metrics(self.core.service, self.core.stats, self.core.inflight()))
        if method == "GET":
            return 200, self.routes()
        return await self.put_routes(body, who or Caller("unnamed", None, None))

    def health(self) -> dict[str, Any]:
        """Open to every local account: nothing here that ``ps`` and ``ss`` do not show already."""
        return {"ok": True, "service": self.core.service, "pid": os.getpid(), "listen": self.listen,
                "admin": self.admin, "admin_auth": "bearer", "generation": self.core.table.generation,
                "started_at": self.started_at, "active_requests": self.core.active_requests()}

    def routes(self) -> dict[str, Any]:
        table = self.core.table
        return {"service": self.core.service, **table.routes.to_json(), "generation": table.generation,
                "inflight": self.core.inflight(), "changed": self.last_change}

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

    async def put_routes(self, body: bytes, who: Caller) -> tuple[int, Any]:
        try:
            data = json.loads(body or b"null")
            routes = Routes.from_json(data)
        except ValueError as exc:
            return 400, {"error": f"invalid routes: {exc}"}
        service = data.get("service")
        if service is not None and service != self.core.service:
            return 409, {"error": f"this router serves {self.core.service!r}, not {service!r}"}
        fence = _fence(data.get("fence"))
        if data.get("fence") is not None and fence is None:
            return 400, {"error": "invalid routes: fence must be {\"rollout\": ID, \"token\": N} with N >= 1"}
        async with self.lock:
            held = self.fence
            if fence is not None and held is not None and fence[0] == held[0] and fence[1] < held[1]:
                return 409, {"error": f"fenced: rollout {fence[0]} is driven under lease token {held[1]} now; this "
                                      f"change carries token {fence[1]}, so its sender lost the lease (nothing "
                                      "changed)"}
            before = self.core.table
            generation = before.generation + 1
            uid = await asyncio.to_thread(who.uid)
            record: dict[str, Any] = {
                "at": time.time(), "generation": generation, "actor": who.actor, "uid": uid,
                "user": user_name(uid), **routes.to_json(),
                "replaced": {"generation": before.generation, "weights": before.routes.weights(),
                             "actor": (self.last_change or {}).get("actor")}}
            if fence is not None:
                record["fence"] = {"rollout": fence[0], "token": fence[1]}
            config = self.core.config
            try:
                await asyncio.to_thread(append_change, config.changes_path, record)
            except OSError as exc:
                return 500, {"error": f"cannot record the change in {config.changes_path}: {exc.strerror or exc}; "
                                      "nothing changed"}
            try:
                await asyncio.to_thread(save_routes, config.routes_file, self.core.service, routes, generation)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(append_change, config.changes_path,
                                            {"at": time.time(), "generation": generation, "failed": "not saved"})
                return 500, {"error": f"cannot persist the routes to {config.routes_file}: "
                                      f"{exc.strerror or exc}; nothing changed"}
            self.core.apply(routes, generation)
            self.last_change = _summary(record)
            if fence is not None:
                self.fence = fence
        print(f"router: routes generation {generation} set by {describe(record)}: "
              f"{', '.join(f'{v.version} {v.weight}%' for v in routes.versions) or 'no routes'}",
              file=sys.stderr, flush=True)
        return 200, self.routes()


def _fence(raw: object) -> tuple[str, int] | None:
    """A change's ``fence`` ({"rollout": ID, "token": N}) as (ID, N); None when absent or malformed.

    Why a router keeps it: a controller renews its lease right before it moves traffic, but a process paused
    between that renewal and its request (SIGSTOP, a VM stall) could still arrive after another server took the
    rollout over. The router refuses a token lower than the newest one it saw for the same rollout; a new rollout
    (another id) starts its own sequence. Kept in the change log, so a restarted router still knows it."""
    if not isinstance(raw, dict):
        return None
    rollout, token = raw.get("rollout"), raw.get("token")
    if not isinstance(rollout, str) or not rollout or isinstance(token, bool) or not isinstance(token, int) \
            or token < 1:
        return None
    return rollout, token


class Caller:
    """Who sent a request: the name it gives, and its connection (for the account behind it)."""

    __slots__ = ("actor", "local", "peer")

    def __init__(self, actor: str, peer: Any, local: Any) -> None:
        self.actor = actor
        self.peer = peer
        self.local = local

    def uid(self) -> int | None:
        if not isinstance(self.peer, tuple) or not isinstance(self.local, tuple):
            return None
        return peer_uid(self.peer, self.local)


def describe(record: dict[str, Any]) -> str:
    """``alice (uid 1000 alice)``: the name claimed, then the account the kernel saw."""
    uid, user = record.get("uid"), record.get("user")
    account = "account unknown" if uid is None else f"uid {uid}" + (f" {user}" if user else "")
    return f"{record.get('actor') or 'unnamed'} ({account})"


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("at", "generation", "actor", "uid", "user")}


async def _discard(reader: asyncio.StreamReader, length: str) -> None:
    """Read and drop a small body already on its way, so closing the connection does not reset it before the
    client has read the answer; a large one is not waited for."""
    if length.isdigit() and 0 < int(length) <= DISCARD_MAX:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            async with asyncio.timeout(1.0):
                await reader.readexactly(int(length))


def _path(target: str) -> str:
    return urlsplit(target).path.rstrip("/") or "/"
