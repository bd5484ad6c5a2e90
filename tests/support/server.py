"""A real ``releasegate server`` in a subprocess on a free loopback port, for the server tests.

``start`` waits for ``/readyz`` (polled, never slept); ``stop`` ends it with SIGTERM (``kill=True``: SIGKILL, as a
crash) and always reaps it, so no test leaks a server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from releasegate.server.app import create_app
from releasegate.server.auth import issue
from releasegate.store.db import forget_store, use_store
from releasegate.store.server import ServerStore
from tests.support.rollouts import RolloutEnv, free_port
from tests.support.wait import wait_until


class ServerProc:
    def __init__(self, state: Path, spec_root: Path, port: int | None = None, listen_host: str = "127.0.0.1",
                 extra: tuple[str, ...] = (), ca: Path | None = None, store: str | None = None) -> None:
        """``ca``: the server serves TLS with a certificate this file verifies (clients then use https).
        ``store``: a ``--store`` URL (e.g. a PostgreSQL database); tokens are then issued there too."""
        self.state, self.spec_root, self.listen_host, self.extra = state, spec_root, listen_host, extra
        self.store = store
        self.port = port or free_port()
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca else True
        self.url = f"{'https' if ca else 'http'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state.parent / f"server-{self.port}.log"

    def start(self) -> ServerProc:
        self.state.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "releasegate", "server", "--listen", f"{self.listen_host}:{self.port}",
               "--state-dir", str(self.state), "--spec-root", str(self.spec_root), *self.extra,
               *(("--store", self.store) if self.store else ())]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.spec_root)
        wait_until(self._ready, 30, f"the server on port {self.port} to be ready (log: {self.log})", every=0.05)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2, verify=self.verify).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, kill: bool = False) -> int | None:
        """End the server (SIGTERM, or SIGKILL as a crash) and reap it; its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def token(self, name: str, role: str, pattern: str = "*") -> str:
        if self.store is None:
            return issue(self.state, name, role, pattern)
        use_store(self.store)
        try:
            return issue(self.state, name, role, pattern)
        finally:
            forget_store()

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, verify=self.verify, **kw)


@contextlib.contextmanager
def served(tmp_path: Path) -> Iterator[tuple[RolloutEnv, ServerProc]]:
    """A rollout environment (apps, specs, a state dir) and a server over its state dir, both cleaned up after."""
    made = RolloutEnv(tmp_path)
    server = ServerProc(made.state, tmp_path).start()
    try:
        yield made, server
    finally:
        server.stop()
        made.close()


@contextlib.asynccontextmanager
async def app_in_this_loop(state: Path, spec_root: Path) -> AsyncIterator[FastAPI]:
    """The server's app over ``state`` without its lifespan (the test's event loop drives it, through httpx's ASGI
    transport): the tables it would make at start, and its rollouts cancelled and released at the end."""
    ServerStore(state, create=True).close()
    built = create_app(state, spec_root=spec_root, adopt=False)
    try:
        yield built
    finally:
        await built.state.supervisor.shutdown()
        built.state.reads.close()
