"""Real processes and real sockets for the router tests: a keep-alive test backend, http.server, a router.

Everything synchronises by polling with a deadline, never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .wait import terminate, wait_until

DEADLINE = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- a keep-alive HTTP/1.1 test backend -------------------------------------------------------------------


@dataclass
class KeepAliveBackend:
    """An HTTP/1.1 keep-alive server in a thread. Paths:

    ``/`` and anything else: 200, body = name; ``/echo``: the request body back (Content-Length or chunked in);
    ``/status/N``: status N; ``/chunked``: a chunked response; ``/gate``: waits until ``release()``; ``/close``:
    HTTP/1.1 response with Connection: close; ``/eof``: an HTTP/1.0 close-delimited body; ``/drop-next``:
    answers, then closes the connection on the next request without answering it.
    """

    name: str
    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _gate: asyncio.Event | None = None
    _server: asyncio.Server | None = None
    open_conns: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> KeepAliveBackend:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._gate = asyncio.Event()

            async def boot() -> None:
                self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(boot())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"backend-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(DEADLINE)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            server, loop = self._server, self._loop

            async def shutdown() -> None:
                server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                loop.stop()

            asyncio.run_coroutine_threadsafe(shutdown(), loop)
            if self._thread is not None:
                self._thread.join(DEADLINE)

    def release(self) -> None:
        """Let every request waiting on ``/gate`` (now and later) answer."""
        assert self._loop is not None and self._gate is not None
        self._loop.call_soon_threadsafe(self._gate.set)

    def total(self) -> int:
        return sum(self.hits.values())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_conns += 1
        drop_next = False
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if drop_next:  # what a backend closing an idle connection looks like to a racing request
                    self.hits["dropped"] += 1
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    k, sep, v = line.partition(":")
                    if sep:
                        headers[k.strip().lower()] = v.strip()
                body = b""
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if not size:
                            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                                pass
                            break
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                elif "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                path = target.split("?")[0]
                self.hits[path] += 1
                self.headers_seen.append(headers)
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                try:
                    await self._respond(writer, method, path, body, keep)
                except ConnectionResetError:
                    return
                drop_next = path == "/drop-next"
                if not keep:
                    return
        finally:
            self.open_conns -= 1
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes,
                       keep: bool) -> None:
        status, extra, out = 200, "", self.name.encode()
        if path == "/echo":
            out = body
            extra = f"X-Body-Sha: {hashlib.sha256(body).hexdigest()}\r\n"
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
        elif path == "/gate":
            assert self._gate is not None
            await self._gate.wait()
        elif path == "/close":
            keep = False
        if path == "/eof":  # HTTP/1.0 style: no length, the body ends when the connection does
            writer.write(f"HTTP/1.0 200 OK\r\nX-Backend: {self.name}\r\n\r\n".encode() + b"eof-" * 5000)
            await writer.drain()
            raise ConnectionResetError  # leaves _handle, which closes the connection
        if path == "/chunked":
            parts = (b"part1-", self.name.encode(), b"-end")
            payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
            writer.write(f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Backend: {self.name}\r\n\r\n"
                         .encode() + payload + b"0\r\n\r\n")
        elif status in (204, 304):
            writer.write(f"HTTP/1.1 {status} X\r\nX-Backend: {self.name}\r\n\r\n".encode())
        else:
            conn = "" if keep else "Connection: close\r\n"
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(out)}\r\nX-Backend: {self.name}\r\n"
                         f"{extra}{conn}\r\n".encode() + (out if method != "HEAD" else b""))
        await writer.drain()


# --- python3 -m http.server: HTTP/1.0, close-delimited ------------------------------------------------------


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    address: str

    def stop(self) -> None:
        terminate(self.proc, DEADLINE)


def start_http_server(directory: Path) -> Proc:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                            cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        assert proc.poll() is None, "http.server exited"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False

    wait_until(up, what="http.server to listen")
    return Proc(proc, f"127.0.0.1:{port}")


# --- the router under test -------------------------------------------------------------------------------


@dataclass
class RouterProc:
    proc: subprocess.Popen[bytes]
    state_file: Path
    routes_file: Path
    log_file: Path
    listen: str
    admin: str
    token_file: Path

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def auth(self, actor: str = "router-tests") -> dict[str, str]:
        """The headers of an authenticated admin call (the token of this router, who makes it)."""
        return {"Authorization": f"Bearer {self.token}", "X-Releasegate-Actor": actor}

    def admin_get(self, path: str) -> Any:
        return httpx.get(f"http://{self.admin}{path}", headers=self.auth(), timeout=5, trust_env=False).json()

    def put_routes(self, versions: list[dict[str, Any]], actor: str = "router-tests") -> httpx.Response:
        return httpx.put(f"http://{self.admin}/routes", json={"versions": versions}, headers=self.auth(actor),
                         timeout=5, trust_env=False)

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(DEADLINE)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(DEADLINE)
        return int(self.proc.returncode)


def router_args(tmp: Path, service: str = "shop", listen: str = "127.0.0.1:0", *extra: str) -> list[str]:
    return [sys.executable, "-m", "releasegate.router", "--service", service, "--listen", listen,
            "--routes-file", str(tmp / "routes.json"), "--state-file", str(tmp / "router.state.json"), *extra]


def start_router(tmp: Path, *extra: str, service: str = "shop", listen: str = "127.0.0.1:0",
                 max_fds: int | None = None) -> RouterProc:
    """``max_fds``: the router's RLIMIT_NOFILE (soft and hard), set before it starts, for fd-exhaustion tests."""
    state_file = tmp / "router.state.json"
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
    log_file = tmp / "router.log"
    with open(log_file, "ab") as log:
        args = router_args(tmp, service, listen, *extra)
        if max_fds is not None:  # the limit set in the child itself: no preexec_fn in a threaded test process
            args[1:3] = ["-c", "import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, "
                         f"({max_fds}, {max_fds})); runpy.run_module('releasegate.router', run_name='__main__', "
                         "alter_sys=True)"]
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"router exited with {proc.returncode}: {log_file.read_text()}")
        try:
            data = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None
        return data if data.get("pid") == proc.pid else None

    state = wait_until(ready, what="the router's state file")
    return RouterProc(proc, state_file, tmp / "routes.json", log_file, state["listen"], state["admin"],
                      tmp / f"{service}.admin-token")


def raw_request(address: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes: for HTTP/1.0 and framing tests."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)
