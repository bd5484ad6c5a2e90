"""The controller's side of the built-in router: an admin-API client and the process helpers that start it.

The router is started detached (its own session) so that killing or restarting the controller never interrupts
user traffic; the state file it writes is how a later controller finds it again. Its admin API wants the token in
``routers/<service>.admin-token`` (0600, made here before the router starts); the client reads it from there for
each call and names who it is (``X-Releasegate-Actor``), which the router records with every route change.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
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
from releasegate.router.adminauth import AdminTokenError, default_token_file, ensure_admin_token, read_admin_token
from releasegate.router.routes_file import default_changes_file
from releasegate.spec.models import BuiltinRouter

START_TIMEOUT = 10.0
POLL = 0.05


def default_actor() -> str:
    """How the controller names itself to the router: the OS login and the process (the router adds the uid the
    kernel reports for the connection)."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return f"releasegate (os login {login}, pid {os.getpid()})"


class BuiltinRouterClient:
    """Talks to one router's admin API; implements the ``Router`` protocol for the service it serves.

    ``token_file`` is read at each call (a few bytes), so a router restarted with a new token is followed; without
    one (or with none in it) calls go out unauthenticated, which only a router from before admin tokens accepts.
    """

    def __init__(self, admin: str, timeout: float = 5.0, *, token_file: Path | None = None,
                 actor: str | None = None) -> None:
        self.admin = admin
        self.base = f"http://{admin}"
        self.timeout = timeout
        self.token_file = token_file
        self.actor = actor or default_actor()
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"X-Releasegate-Actor": self.actor}
        if self.token_file is not None:
            try:
                token = read_admin_token(self.token_file)
            except AdminTokenError:
                token = None  # the router will say 401; _call names the file
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
        return headers

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
            resp = await self._http().request(method, path, headers=self._headers(), **kwargs)
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
            hint = ""
            if resp.status_code == 401:
                hint = self._token_hint()
            raise ProviderError(f"the built-in router at {self.admin} refused {method} {path}: "
                                f"HTTP {resp.status_code}: {detail}{hint}")
        if data is None:
            raise ProviderError(f"the built-in router at {self.admin} answered {method} {path} with non-JSON")
        return data

    def _token_hint(self) -> str:
        if self.token_file is None:
            return "; this client was given no token file"
        try:
            token = read_admin_token(self.token_file)
        except AdminTokenError as exc:
            return f"; {exc}"
        if token is None:
            return (f"; there is no token file {self.token_file} any more: restart the router "
                    "(`releasegate router restart SERVICE`) to get a new one")
        return (f"; the token in {self.token_file} is not the one the router started with (was the file "
                "replaced?): restart the router (`releasegate router restart SERVICE`)")

    def _check_service(self, data: Any, service: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ProviderError(f"the built-in router at {self.admin} sent an unexpected answer")
        if data.get("service") != service:
            raise ProviderError(f"the router at {self.admin} serves {data.get('service')!r}, not {service!r}")
        return data

    async def set_routes(self, service: str, routes: Routes) -> None:
        body = {"service": service, **routes.to_json()}
        if routes.fence is not None:
            body["fence"] = {"rollout": routes.fence[0], "token": routes.fence[1]}
        self._check_service(await self._call("PUT", "/routes", json=body), service)

    async def get_routes_info(self, service: str) -> dict[str, Any]:
        """``GET /routes`` as the router sends it: the versions, ``generation``, ``inflight`` per backend and
        ``changed`` (when and by whom the routes in force were set)."""
        return self._check_service(await self._call("GET", "/routes"), service)

    async def get_routes(self, service: str) -> Routes:
        data = await self.get_routes_info(service)
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

    async def totals(self) -> dict[str, Any]:
        """``{"started_at": T, "versions": {version: {requests, errors, hist: {bucket: n}}}}``: counts since each
        version's first request through this router process (``started_at`` changes when it restarts)."""
        data = await self._call("GET", "/totals")
        if not isinstance(data, dict) or not isinstance(data.get("versions"), dict):
            raise ProviderError(f"the built-in router at {self.admin} sent unexpected totals")
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


def admin_token_path(state_dir: Path, service: str) -> Path:
    """``routers/<service>.admin-token``: the admin API's secret, 0600, readable by the account that runs it
    (named as the router names it by default, beside its routes file)."""
    return default_token_file(router_paths(state_dir, service)[1], service)


def changes_path(state_dir: Path, service: str) -> Path:
    """``routers/<service>.changes.jsonl``: every route change the router applied, with who made it."""
    return default_changes_file(router_paths(state_dir, service)[1], service)


def router_client(state_dir: Path, service: str, admin: str, timeout: float = 5.0,
                  actor: str | None = None) -> BuiltinRouterClient:
    """A client for the service's router at ``admin`` with the token of the state dir."""
    return BuiltinRouterClient(admin, timeout, token_file=admin_token_path(state_dir, service), actor=actor)


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


def _admin_health(admin: str, service: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """``GET /health`` (no token needed) when it answers for ``service``."""
    try:
        resp = httpx.get(f"http://{admin}/health", timeout=timeout, trust_env=False)
        data = resp.json()
    except (httpx.HTTPError, ValueError):
        return None
    ok = resp.status_code == 200 and isinstance(data, dict) and data.get("service") == service
    return data if ok else None


def read_router_state(state_dir: Path, service: str) -> dict[str, Any] | None:
    """The running router's state (pid, service, listen, admin, routes_file, started_at), or None when it is
    not running: no state file, a dead pid, or an admin API that does not answer for this service.

    ``admin_auth`` is what the router itself says: ``"bearer"``, or None for a router started by a releasegate from
    before admin tokens, whose admin API any local account can use until it is restarted."""
    state_file, _, _ = router_paths(state_dir, service)
    data = _read_state_file(state_file)
    if data is None or not _pid_alive(data["pid"]):
        return None
    health = _admin_health(data["admin"], service)
    if health is None:
        return None
    return {**data, "admin_auth": health.get("admin_auth")}


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
    """The router's command line: the path of its token file, never the token (``/proc/*/cmdline`` is public)."""
    state_file, routes_file, _ = router_paths(state_dir, service)
    return [sys.executable, "-m", "releasegate.router", "--service", service, "--listen", spec.listen,
            "--admin", spec.admin or "127.0.0.1:0", "--routes-file", str(routes_file),
            "--state-file", str(state_file), "--admin-token-file", str(admin_token_path(state_dir, service)),
            "--changes-file", str(changes_path(state_dir, service)), "--sticky", spec.sticky,
            "--sticky-cookie", spec.sticky_cookie, "--sticky-header", spec.sticky_header]


def ensure_token(state_dir: Path, service: str) -> Path:
    """The router's token file, created (0600) when missing; ProviderError when it cannot be trusted."""
    path = admin_token_path(state_dir, service)
    try:
        ensure_admin_token(path)
    except AdminTokenError as exc:
        raise ProviderError(str(exc)) from None
    except OSError as exc:
        raise ProviderError(f"cannot create the router's admin token file {path}: {exc.strerror or exc}") from None
    return path


def spawn_router(state_dir: Path, service: str, spec: BuiltinRouter) -> subprocess.Popen[bytes]:
    """Start the router detached: own session (a Ctrl-C or crash of the controller does not reach it), output
    appended to its log file, no stdin; its admin token file exists before it starts."""
    state_file, _, log_file = router_paths(state_dir, service)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    ensure_token(state_dir, service)
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
        return router_client(state_dir, service, state["admin"])
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
            client = router_client(state_dir, service, data["admin"])
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
