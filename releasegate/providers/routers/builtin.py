"""The controller's side of the built-in router: an admin-API client and the process helpers that start it.

The router is started detached (its own session) so that killing or restarting the controller never interrupts
user traffic; the state file it writes is how a later controller finds it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from releasegate.errors import ProviderError
from releasegate.providers.base import Routes
from releasegate.spec.models import BuiltinRouter

START_TIMEOUT = 10.0
POLL = 0.05


class BuiltinRouterClient:
    """Talks to one router's admin API; implements the ``Router`` protocol for the service it serves."""

    def __init__(self, admin: str, timeout: float = 5.0) -> None:
        self.admin = admin
        self.base = f"http://{admin}"
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        # One pooled client per event loop: a client bound to a closed loop (tests, CLI runs) cannot be reused.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(base_url=self.base, timeout=self.timeout, trust_env=False)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = await self._http().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ProviderError(f"the built-in router's admin API at {self.admin} is unreachable "
                                f"({type(exc).__name__}: {exc or 'no detail'}); is the router running? "
                                "see 'releasegate router status'") from None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code != 200:
            detail = data.get("error") if isinstance(data, dict) else resp.text[:200]
            raise ProviderError(f"the built-in router at {self.admin} refused {method} {path}: "
                                f"HTTP {resp.status_code}: {detail}")
        if data is None:
            raise ProviderError(f"the built-in router at {self.admin} answered {method} {path} with non-JSON")
        return data

    def _check_service(self, data: Any, service: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ProviderError(f"the built-in router at {self.admin} sent an unexpected answer")
        if data.get("service") != service:
            raise ProviderError(f"the router at {self.admin} serves {data.get('service')!r}, not {service!r}")
        return data

    async def set_routes(self, service: str, routes: Routes) -> None:
        body = {"service": service, **routes.to_json()}
        self._check_service(await self._call("PUT", "/routes", json=body), service)

    async def get_routes(self, service: str) -> Routes:
        data = self._check_service(await self._call("GET", "/routes"), service)
        try:
            return Routes.from_json(data)
        except ValueError as exc:
            raise ProviderError(f"the router at {self.admin} reported unreadable routes: {exc}") from None

    async def inflight(self, service: str, backend: str) -> int:
        data = self._check_service(await self._call("GET", "/routes"), service)
        value = data.get("inflight", {}).get(backend, 0)
        return int(value) if isinstance(value, int) else 0

    async def stats(self, window: float, version: str | None = None) -> dict[str, Any]:
        """Per version: requests, errors, rps, error_rate, latency_p50/p95/p99 (seconds, None without data)."""
        params: dict[str, str] = {"window": f"{window:g}"}
        if version is not None:
            params["version"] = version
        data = await self._call("GET", "/stats", params=params)
        if not isinstance(data, dict):
            raise ProviderError(f"the built-in router at {self.admin} sent unexpected statistics")
        return data

    async def health(self) -> dict[str, Any]:
        data = await self._call("GET", "/health")
        if not isinstance(data, dict):
            raise ProviderError(f"the built-in router at {self.admin} sent an unexpected health answer")
        return data


# --- process management -----------------------------------------------------------------------------------


def router_paths(state_dir: Path, service: str) -> tuple[Path, Path, Path]:
    """(state file, routes file, log file) of one service's router, under ``state_dir/routers/``."""
    base = Path(state_dir).absolute() / "routers"
    return base / f"{service}.state.json", base / f"{service}.routes.json", base / f"{service}.log"


def _read_state_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("pid"), int) \
            or not isinstance(data.get("admin"), str):
        return None
    return data


_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}
"""Routers this process started: kept so they can be reaped (no zombie, no ResourceWarning) once they exit."""


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie: a router started by this process and since dead stays a zombie until reaped."""
    child = _SPAWNED.get(pid)
    if child is not None and child.poll() is not None:
        del _SPAWNED[pid]
        return False
    try:
        import psutil

        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def _admin_answers(admin: str, service: str, timeout: float = 1.0) -> bool:
    try:
        resp = httpx.get(f"http://{admin}/health", timeout=timeout, trust_env=False)
        data = resp.json()
    except (httpx.HTTPError, ValueError):
        return False
    return resp.status_code == 200 and isinstance(data, dict) and data.get("service") == service


def read_router_state(state_dir: Path, service: str) -> dict[str, Any] | None:
    """The running router's state (pid, service, listen, admin, routes_file, started_at), or None when it is
    not running: no state file, a dead pid, or an admin API that does not answer for this service."""
    state_file, _, _ = router_paths(state_dir, service)
    data = _read_state_file(state_file)
    if data is None or not _pid_alive(data["pid"]) or not _admin_answers(data["admin"], service):
        return None
    return data


def _log_tail(path: Path, lines: int = 10, since: int = 0) -> str:
    """The last lines the router wrote after byte ``since`` (the log is appended to across restarts)."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(tail) if tail else "(empty log)"


def router_command(state_dir: Path, service: str, spec: BuiltinRouter) -> list[str]:
    state_file, routes_file, _ = router_paths(state_dir, service)
    return [sys.executable, "-m", "releasegate.router", "--service", service, "--listen", spec.listen,
            "--admin", spec.admin or "127.0.0.1:0", "--routes-file", str(routes_file),
            "--state-file", str(state_file), "--sticky", spec.sticky, "--sticky-cookie", spec.sticky_cookie,
            "--sticky-header", spec.sticky_header]


def spawn_router(state_dir: Path, service: str, spec: BuiltinRouter) -> subprocess.Popen[bytes]:
    """Start the router detached: own session (a Ctrl-C or crash of the controller does not reach it), output
    appended to its log file, no stdin."""
    state_file, _, log_file = router_paths(state_dir, service)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(router_command(state_dir, service, spec), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _SPAWNED[proc.pid] = proc
    return proc


async def ensure_router(state_dir: Path, service: str, router_spec: BuiltinRouter) -> BuiltinRouterClient:
    """A client for the service's router, starting the router (detached) first when it is not running."""
    state = await asyncio.to_thread(read_router_state, state_dir, service)
    if state is not None:
        if state.get("listen") != router_spec.listen and not router_spec.listen.endswith(":0"):
            raise ProviderError(f"the router for {service} is running on {state.get('listen')}, but the spec "
                                f"says {router_spec.listen}; stop it ('releasegate router stop') to move it")
        return BuiltinRouterClient(state["admin"])
    state_file, _, log_file = router_paths(state_dir, service)
    start_of_log = log_file.stat().st_size if log_file.exists() else 0
    proc = spawn_router(state_dir, service, router_spec)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        code = proc.poll()
        if code is not None:
            _SPAWNED.pop(proc.pid, None)
            raise ProviderError(f"the router for {service} exited at start (code {code}): "
                                f"{_log_tail(log_file, since=start_of_log)} (log: {log_file})")
        data = _read_state_file(state_file)
        if data is not None and data.get("pid") == proc.pid:
            client = BuiltinRouterClient(data["admin"])
            try:
                health = await client.health()
            except ProviderError:
                health = {}
            if health.get("ok"):
                return client
        if time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                proc.kill()
            raise ProviderError(f"the router for {service} did not come up within {START_TIMEOUT:g}s: "
                                f"{_log_tail(log_file, since=start_of_log)} (log: {log_file})")
        await asyncio.sleep(POLL)


def _is_router(pid: int) -> bool:
    """Guards against a recycled pid: only signal a process whose command line is a releasegate router."""
    try:
        import psutil

        cmd = " ".join(psutil.Process(pid).cmdline())
    except Exception:
        return False
    return "releasegate.router" in cmd or ("releasegate" in cmd and " router" in cmd)


def forget_routes(state_dir: Path, service: str) -> bool:
    """Delete the persisted routes of a service taken down, so a router started later serves nothing old."""
    _, routes_file, _ = router_paths(state_dir, service)
    try:
        routes_file.unlink()
    except FileNotFoundError:
        return False
    return True


def stop_router(state_dir: Path, service: str, timeout: float = 10.0) -> bool:
    """SIGTERM the router (it finishes in-flight requests), SIGKILL after ``timeout``; True if one ran."""
    state_file, _, _ = router_paths(state_dir, service)
    data = _read_state_file(state_file)
    if data is None:
        return False
    pid = data["pid"]
    if not _pid_alive(pid) or not _is_router(pid):
        with contextlib.suppress(OSError):
            state_file.unlink()
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5.0
        while _pid_alive(pid) and time.monotonic() < kill_deadline:
            time.sleep(POLL)
    with contextlib.suppress(OSError):
        state_file.unlink()
    return True
