"""``router: {kind: nginx}``: releasegate renders one file per service into an nginx it does not run, then reloads it.

Design (nginx 1.22 OSS: no sticky module, no API to change or read upstream weights):

- One ``upstream rg_<service>_<i>`` per version that has backends (round-robin inside a version, ``keepalive``
  to the backends), never one upstream with per-server weights: integer server weights cannot express a version
  share exactly when versions have different backend counts, and they cannot keep a user on one version.
- Every request gets a bucket 0-99: the sticky cookie's value when it holds one, else
  ``split_clients "${request_id}"`` (a random 1 % slice per request). A 100-entry ``map`` sends each bucket to a
  version's upstream with exactly the bucket table of the built-in router (``releasegate.router.routing``): the
  versions own consecutive bucket ranges in the order of ``Routes``, so the split is the exact weights and a user
  who landed on the canary at 5 % stays on it at 25 % and 50 %. A user without the cookie gets it
  (``Set-Cookie``) when more than one version serves.
- ``proxy_pass http://$rg_<service>_upstream``: a variable naming an upstream group needs no resolver.
- ``keepalive_timeout`` of the server block is the spec's ``client_keepalive``, ``0`` by default: every route change
  is a reload, and on a reload nginx's old workers close their idle keep-alive client connections, so a client that
  sends on one at that moment gets a reset. Without client keep-alive every request has its own connection and a
  reload loses none. A positive value accepts that race for clients that retry (browsers do).

The file's text (render, parse, the bucket table, the log format) is in ``nginx_config``; this module writes,
checks, reloads and reads back.

Applying: the new file is written beside the owned one (a name no ``*.conf`` include matches), then, under a lock,
renamed over it, the whole configuration is checked with ``nginx -t`` (with the spec's ``-p``/``-c``) and, when the
check fails, the previous file is renamed back and ``ProviderError`` carries nginx's own ``[emerg]`` line. nginx
offers no way to test one included file in isolation, so the new file sits in place for the duration of
``nginx -t`` (milliseconds); a reload by someone else in that window would fail on it and keep the old
configuration. When valid, ``nginx -s reload`` (graceful: old workers finish their requests) follows, and
``set_routes`` returns only once nginx serves the new generation.

Reading back: nginx cannot report the weights it applies. ``get_routes`` parses the owned file (the routes comment
for versions and weights, cross-checked against the upstream blocks and the bucket map) and asks the server block's
loopback-only ``/.releasegate/generation`` location which generation the running workers serve: a file that nginx
has not loaded (master down, failed reload) is an error, never reported as applied.

Evidence: the server block writes one JSON line per request into ``access_log`` (``log_format rg_<service>``: the
version, from a map of the chosen upstream, ``$status``, ``$request_time``, ``$msec``), which
``releasegate.providers.metrics.nginx_log`` reads into per-version counters. The log is rotated (renamed to
``.1``, then ``nginx -s reopen``) past ``access_log_max_mb``, under the same lock as route changes.

In-flight requests: nginx OSS does not count them per backend. ``inflight`` reports 1 for a routed backend and for
``drain_grace`` seconds after a backend left the routes (removal times kept in a small state file next to the owned
config), then 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from releasegate.errors import ProviderError
from releasegate.providers.base import Routes
from releasegate.providers.routers.nginx_config import (
    BUCKETS,
    GENERATION_PATH,
    access_log_path,
    bucket_table,
    parse,
    render,
)
from releasegate.spec.routers_nginx import NginxRouter as NginxRouterSpec

__all__ = ["BUCKETS", "GENERATION_PATH", "NginxRouter", "access_log_path", "bucket_table", "parse", "render"]


class NginxRouter:
    """The ``Router`` protocol over an nginx releasegate does not run: one owned file per service, then a reload."""

    def __init__(self, spec: NginxRouterSpec, state_dir: Path, service: str,
                 now: Callable[[], float] = time.time) -> None:
        self.spec = spec
        self.state_dir = Path(state_dir)  # kept for symmetry with the other providers; nginx state sits by its file
        self.service = service
        self.path = Path(spec.config_file.replace("{service}", service)).absolute()
        self.now = now

    # --- files ----------------------------------------------------------------------------------------------

    def _sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _command(self, *args: str) -> list[str]:
        cmd = [self.spec.nginx]
        if self.spec.prefix:
            cmd += ["-p", self.spec.prefix]
        if self.spec.main_config:
            cmd += ["-c", self.spec.main_config]
        return [*cmd, *args]

    async def _run(self, *args: str) -> tuple[int, str]:
        try:
            proc = await asyncio.create_subprocess_exec(*self._command(*args), stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            raise ProviderError(f"cannot run nginx ({self.spec.nginx}): {exc}") from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.spec.reload_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ProviderError(f"nginx {' '.join(args)} did not finish within {self.spec.reload_timeout:g}s") from None
        return proc.returncode or 0, out.decode(errors="replace")

    def _read_state(self) -> dict[str, float]:
        try:
            data = json.loads(self._sibling(".rg-state.json").read_text(encoding="utf-8"))
            removed = data["removed"]
            return {str(k): float(v) for k, v in removed.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _write_atomic(self, path: Path, text: str) -> None:
        tmp = path.with_name(path.name + ".rg-tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _read_owned(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProviderError(f"cannot read the nginx file {self.path}: {exc}") from None

    # --- the served generation ------------------------------------------------------------------------------

    def _served_generation_sync(self) -> str | None:
        host, port = self.spec.listen.rsplit(":", 1)
        host = host.strip("[]")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}.get(host, host)
        conn = http.client.HTTPConnection(host, int(port), timeout=2.0)
        try:
            conn.request("GET", GENERATION_PATH, headers={"Connection": "close"})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace").strip()
            return body if resp.status == 200 else None
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    async def _served_generation(self) -> str | None:
        return await asyncio.to_thread(self._served_generation_sync)

    # --- Router protocol ------------------------------------------------------------------------------------

    async def set_routes(self, service: str, routes: Routes) -> None:
        self._check_service(service)
        text = render(service, routes, self.spec)
        _, generation = parse(text, service)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self._sibling(".rg-lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)  # one writer per file, across processes
            with contextlib.suppress(ProviderError):  # not fatal: the reload below reopens the log too
                await self._rotate_log_locked()
            old = self._read_owned()
            if old == text and await self._served_generation() == generation:
                return
            new = self._sibling(".rg-new")
            self._write_atomic(new, text)
            os.replace(new, self.path)
            code, out = await self._run("-t")
            if code != 0:
                if old is None:
                    self.path.unlink(missing_ok=True)
                else:
                    self._write_atomic(self.path, old)
                raise ProviderError(f"nginx rejected the routes for {service}, previous file kept: "
                                    f"{_nginx_error(out)}")
            self._record_removals(old, routes)
            master = self._master()
            old_workers = _accepting_workers(master) if master is not None else set()
            code, out = await self._run("-s", "reload")
            if code != 0:
                raise ProviderError(f"nginx reload failed for {service}: {_nginx_error(out)}")
            await self._wait_for(generation, master, old_workers)
        finally:
            os.close(lock)  # releases the lock

    # --- the access log -------------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path | None:
        return access_log_path(self.spec, self.service)

    async def rotate_log(self) -> bool:
        """Past ``access_log_max_mb``, rename the access log to ``.1`` and have nginx reopen it (True); a reader
        keeps following the renamed file for the lines nginx still writes there before it reopens."""
        if not self._log_too_big():
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self._sibling(".rg-lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            return await self._rotate_log_locked()
        finally:
            os.close(lock)

    def _log_too_big(self) -> bool:
        log = self.log_path
        try:
            return log is not None and log.stat().st_size > self.spec.access_log_max_mb * 1024 * 1024
        except OSError:
            return False

    async def _rotate_log_locked(self) -> bool:
        log = self.log_path
        if log is None or not self._log_too_big():  # checked again: another process may have rotated it
            return False
        try:
            os.replace(log, log.with_name(log.name + ".1"))
        except OSError as exc:
            raise ProviderError(f"cannot rotate the nginx access log {log}: {exc.strerror or exc}") from None
        code, out = await self._run("-s", "reopen")
        if code != 0:
            raise ProviderError(f"nginx did not reopen its access log {log} after rotation: {_nginx_error(out)}")
        return True

    async def _wait_for(self, generation: str, master: int | None, old_workers: set[int]) -> None:
        """Until the new generation answers and no worker of the old configuration still accepts connections:
        the master keeps both for ~100 ms after starting the new workers, so the generation alone is not enough."""
        deadline = time.monotonic() + self.spec.reload_timeout
        while (served := await self._served_generation()) != generation \
                or (master is not None and old_workers & _accepting_workers(master)):
            if time.monotonic() > deadline:
                raise ProviderError(f"nginx did not serve the new routes for {self.service} within "
                                    f"{self.spec.reload_timeout:g}s (serving generation {served}); "
                                    "see nginx's error log")
            await asyncio.sleep(0.02)

    def _master(self) -> int | None:
        """The master's pid from the pid file when it names a live nginx master; None when unknown."""
        try:
            pid = int(Path(self.spec.pid_file).read_text(encoding="ascii").strip())
            name = " ".join(psutil.Process(pid).cmdline())
        except (OSError, ValueError, psutil.Error):
            return None
        return pid if "nginx" in name and "master" in name else None

    def _record_removals(self, old: str | None, routes: Routes) -> None:
        before: set[str] = set()
        if old is not None:
            with contextlib.suppress(ProviderError):
                before = {b for v in parse(old, self.service)[0].versions for b in v.backends}
        after = {b for v in routes.versions for b in v.backends}
        removed = {b: t for b, t in self._read_state().items()
                   if b not in after and self.now() - t < self.spec.drain_grace}
        removed.update({b: self.now() for b in before - after})
        self._write_atomic(self._sibling(".rg-state.json"), json.dumps({"removed": removed}))

    async def get_routes(self, service: str) -> Routes:
        """The owned file's routes, only when the running workers serve its generation (the dashboard shows them as
        what the data plane reports). The file and process reads run in a thread: the server's event loop calls
        this too."""
        self._check_service(service)
        text, master_gone = await asyncio.to_thread(self._owned_and_master)
        if text is None:
            return Routes()
        routes, generation = parse(text, service)
        if master_gone:
            raise ProviderError(f"nginx's master (pid file {self.spec.pid_file}) is not running")
        served = await self._served_generation()
        if served != generation:
            raise ProviderError(f"nginx does not serve the routes file {self.path} for {service} (file generation "
                                f"{generation}, served {served or 'nothing: is nginx running with it included?'})")
        return routes

    def _owned_and_master(self) -> tuple[str | None, bool]:
        """The owned file's text, and whether its pid file names a master that is not running."""
        text = self._read_owned()
        return text, text is not None and Path(self.spec.pid_file).exists() and self._master() is None

    async def inflight(self, service: str, backend: str) -> int:
        self._check_service(service)
        text = self._read_owned()
        if text is not None:
            with contextlib.suppress(ProviderError):
                if any(backend in v.backends for v in parse(text, service)[0].versions):
                    return 1
        removed_at = self._read_state().get(backend)
        return 1 if removed_at is not None and self.now() - removed_at < self.spec.drain_grace else 0

    def _check_service(self, service: str) -> None:
        if service != self.service:
            raise ProviderError(f"this nginx router serves {self.service!r}, not {service!r}")


def _accepting_workers(master: int) -> set[int]:
    """The master's workers that still accept connections (a worker told to quit retitles itself, then closes
    its listening sockets)."""
    try:
        children = psutil.Process(master).children()
    except psutil.Error:
        return set()
    found = set()
    for child in children:
        with contextlib.suppress(psutil.Error):
            title = " ".join(child.cmdline())
            if "worker process" in title and "shutting down" not in title:
                found.add(child.pid)
    return found


def _nginx_error(output: str) -> str:
    """nginx's own error lines ([emerg]/[alert]/[crit]), else its whole output, on one line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"\[(emerg|alert|crit|error)\]", ln)]
    return " | ".join(errors or lines) or "(no output)"

