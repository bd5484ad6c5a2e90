"""Local processes as the platform: each instance is a shell command in its own session on a loopback port.

Instances must outlive the controller, so what we know about them lives in files, not in memory: one JSON
record per instance under ``state_dir/platform/local/<service>/`` (next to its log), read back by a restarted
controller or by the CLI in another process. A pid alone is not an identity (pids are reused), so each record
also keeps the process's create_time and nothing is signalled unless both match.

An instance whose process ended without ``stop()`` is not forgotten: its record turns to ``state: exited``
(with the exit code when this process was its parent) and ``dead_instances()`` reports it until ``stop()``
removes it, so a controller that was busy elsewhere still learns which instance died and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from releasegate.errors import ProviderError
from releasegate.fileio import write_json_atomic
from releasegate.providers.base import Instance
from releasegate.spec import models

HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3
_ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "errno 98")
_KILL_WAIT = 5.0
_POLL = 0.02

_CHILDREN: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
"""Every process this Python process spawned, with its create_time, shared by all LocalPlatform objects so
that any of them can reap a child (and learn its exit code) whichever object started it."""


@dataclass
class _Record:
    service: str
    version: str
    id: str
    port: int
    pid: int
    pgid: int
    log: str
    log_offset: int
    started_at: float
    create_time: float
    command: str
    cwd: str
    host: str = HOST
    state: str = "running"  # or "exited"
    exit_code: int | None = None
    exited_at: float | None = None

    def instance(self) -> Instance:
        return Instance(self.service, self.version, self.id, self.host, self.port, self.pid, self.log,
                        self.started_at)


@dataclass(frozen=True)
class DeadInstance:
    """An instance whose process ended without ``stop()``; ``exit_code`` is None unless we were its parent."""

    instance: Instance
    exit_code: int | None
    log_tail: str
    exited_at: float

    def describe(self) -> str:
        i = self.instance
        if self.exit_code is None:
            how = "exited"
        elif self.exit_code < 0:
            how = f"was killed by {_signal_name(-self.exit_code)}"
        else:
            how = f"exited with code {self.exit_code}"
        tail = f": {self.log_tail}" if self.log_tail else ""
        return (f"instance {i.service} {i.version} {i.id} ({i.address}, pid {i.pid}) {how}{tail} "
                f"(log: {i.log})")


class LocalPlatform:
    """The ``Platform`` for ``platform: {kind: local}``; see the module docstring for where state lives."""

    def __init__(self, spec: models.LocalPlatform, state_dir: Path, spec_dir: Path, *,
                 startup_grace: float = 1.0) -> None:
        """``startup_grace``: how long ``start`` watches a new process for an early exit. It stops watching
        as soon as the instance accepts connections on its port, so a healthy app costs only its start-up."""
        self.spec = spec
        self.root = Path(state_dir) / "platform" / "local"
        self.spec_dir = Path(spec_dir)
        self.startup_grace = startup_grace
        self._locks: dict[str, asyncio.Lock] = {}

    # --- the Platform protocol ------------------------------------------------------------------------------

    async def start(self, service: str, version: str, count: int) -> list[Instance]:
        """Ensure ``count`` live instances of ``version``: the oldest live ones, plus new ones for the rest.

        Extra live instances are left alone (scaling down is a ``stop`` decision). If a new instance exits
        right away, the others this call started are stopped too and ProviderError says why, with the log's
        tail.
        """
        _check_names(service, version)
        async with self._locks.setdefault(service, asyncio.Lock()):
            live = [i for i in await self.instances(service) if i.version == version]
            missing = count - len(live)
            if missing <= 0:
                return live[:count]
            cwd = self._cwd(service, version)
            results = await asyncio.gather(*(self._start_one(service, version, cwd) for _ in range(missing)),
                                           return_exceptions=True)
            started = [r for r in results if isinstance(r, Instance)]
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                for inst in started:
                    await self.stop(inst, grace=min(self.spec.stop_grace, 5.0))
                raise failure
            return live + started

    async def stop(self, instance: Instance, grace: float) -> None:
        """SIGTERM the instance's process group, SIGKILL what is left after ``grace``, forget the instance.

        Idempotent: an instance already gone (or never known) just loses its record. A record whose pid now
        belongs to another process (create_time differs) is dropped without signalling anything.
        """
        path = self._record_path(instance.service, instance.version, instance.id)
        rec = _read(path)
        if rec is not None and rec.state == "running" and not _foreign(rec):
            await _terminate(rec, grace)
        path.unlink(missing_ok=True)
        if rec is not None:
            _CHILDREN.pop(rec.pid, None)

    async def instances(self, service: str) -> list[Instance]:
        """Live instances of every version, oldest first; records of ended processes are marked exited."""
        return [rec.instance() for rec in self._refresh(service) if rec.state == "running"]

    async def alive(self, instance: Instance) -> bool:
        rec = self._refreshed(instance)
        return rec is not None and rec.state == "running"

    # --- noticing deaths ------------------------------------------------------------------------------------

    async def dead_instances(self, service: str) -> list[DeadInstance]:
        """Instances whose process ended without ``stop()``, oldest first.

        They stay listed until ``stop(instance)`` is called for them (which also clears the record), so a
        controller crash between noticing and acting loses nothing.
        """
        return [self._dead(rec) for rec in self._refresh(service) if rec.state == "exited"]

    async def exit_info(self, instance: Instance) -> DeadInstance | None:
        """Why ``instance`` no longer runs; None while it runs or when nothing is known about it."""
        rec = self._refreshed(instance)
        return self._dead(rec) if rec is not None and rec.state == "exited" else None

    def service_dir(self, service: str) -> Path:
        return self.root / service

    # --- internals ------------------------------------------------------------------------------------------

    def _record_path(self, service: str, version: str, id: str) -> Path:
        return self.service_dir(service) / f"{version}-{id}.json"

    def _cwd(self, service: str, version: str) -> Path:
        cwd = (self.spec_dir / self.spec.cwd.replace("{version}", version)).resolve()
        if not cwd.is_dir():
            raise ProviderError(f"instance {service} {version}: working directory {cwd} does not exist "
                                f"(platform.cwd {self.spec.cwd!r}, relative to {self.spec_dir})")
        return cwd

    def _refresh(self, service: str) -> list[_Record]:
        directory = self.service_dir(service)
        paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
        records = [_settle(rec, path) for path in paths if (rec := _read(path)) is not None]
        return sorted(records, key=lambda r: (r.started_at, r.id))

    def _refreshed(self, instance: Instance) -> _Record | None:
        path = self._record_path(instance.service, instance.version, instance.id)
        rec = _read(path)
        return None if rec is None else _settle(rec, path)

    def _dead(self, rec: _Record) -> DeadInstance:
        return DeadInstance(rec.instance(), rec.exit_code, _log_tail(rec), rec.exited_at or 0.0)

    def _next_id(self, service: str) -> str:
        """A per-service counter under a file lock: ids stay unique across restarts and processes."""
        with open(self.service_dir(service) / "next-id", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read().strip()
            n = int(text) if text.isdigit() else 1
            f.seek(0)
            f.truncate()
            f.write(f"{n + 1}\n")
        return f"{n:04d}"

    async def _start_one(self, service: str, version: str, cwd: Path) -> Instance:
        self.service_dir(service).mkdir(parents=True, exist_ok=True)
        id = self._next_id(service)
        path = self._record_path(service, version, id)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            rec = self._spawn(service, version, id, cwd, _free_port())
            _write(path, rec)
            code = await self._watch_start(rec)
            if code is None:
                return rec.instance()
            path.unlink(missing_ok=True)
            _CHILDREN.pop(rec.pid, None)
            tail = _log_tail(rec)
            if attempt < _PORT_ATTEMPTS and any(s in tail.lower() for s in _ADDRESS_IN_USE):
                continue  # someone took the port between our probe and the app's bind: try another one
            hint = " (the command must keep running in the foreground)" if code == 0 else ""
            raise ProviderError(f"instance {service} {version} exited with code {code} right after start"
                                f"{hint}: {tail or '(no output)'} (log: {rec.log})")
        raise AssertionError("unreachable")

    def _spawn(self, service: str, version: str, id: str, cwd: Path, port: int) -> _Record:
        command = self.spec.command.format(port=port, version=version)
        env = {**os.environ, **self.spec.env, "PORT": str(port), "RELEASEGATE_VERSION": version,
               "RELEASEGATE_SERVICE": service}
        log_path = self.service_dir(service) / f"{version}-{id}.log"
        with open(log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"--- releasegate {stamp}: {service} {version} {id} on {HOST}:{port}: {command}\n"
                      .encode())
            log.flush()
            offset = log.tell()
            try:
                popen = subprocess.Popen(["/bin/sh", "-c", command], cwd=cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            except OSError as exc:
                msg = f"instance {service} {version}: cannot run /bin/sh in {cwd}: {exc}"
                raise ProviderError(msg) from exc
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:  # cannot happen while unreaped; keep a record anyway so the exit is reported
            create_time = 0.0
        _CHILDREN[popen.pid] = (popen, create_time)
        return _Record(service, version, id, port, popen.pid, popen.pid, str(log_path), offset, time.time(),
                       create_time, command, str(cwd))

    async def _watch_start(self, rec: _Record) -> int | None:
        """The exit code if the process ends within the grace; None once it listens or the grace is over."""
        deadline = time.monotonic() + self.startup_grace
        while True:
            exited, code = _exit_status(rec)
            if exited:
                return code if code is not None else -1
            if _listening(rec) or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(_POLL)


# --- processes ----------------------------------------------------------------------------------------------


def _check_names(service: str, version: str) -> None:
    """Both end up in file names and commands, so they are held to the spec's safe alphabets here too."""
    if not models.SERVICE_NAME.match(service) or not models.VERSION_NAME.match(version):
        raise ProviderError(f"unsafe service or version name: {service!r} {version!r}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _listening(rec: _Record) -> bool:
    """Whether the instance's own process tree listens on its port.

    Asking the processes, not connecting to the port: a port someone else took between our probe and the app's
    bind would answer a connect too, while our app is about to die with "address already in use".
    """
    try:
        root = psutil.Process(rec.pid)
        for proc in (root, *root.children(recursive=True)):
            connections = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
            for conn in connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == rec.port:
                    return True
    except psutil.Error:
        return False
    return False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _child(rec: _Record) -> subprocess.Popen[bytes] | None:
    popen, create_time = _CHILDREN.get(rec.pid, (None, 0.0))
    return popen if popen is not None and create_time == rec.create_time else None


def _reap(rec: _Record) -> tuple[bool, int | None]:
    """(exited, exit code) for a child of ours; (False, None) when it is not our child or still runs.

    Reaping matters: our own dead child stays a zombie, alive to kill(pid, 0), until someone waits for it.
    """
    popen = _child(rec)
    if popen is not None:
        code = popen.poll()
        return code is not None, code
    if _identify(rec) is None:  # never wait for a pid that is no longer the recorded process
        return False, None
    try:
        got, status = os.waitpid(rec.pid, os.WNOHANG)
    except ChildProcessError:
        return False, None
    return (True, os.waitstatus_to_exitcode(status)) if got == rec.pid else (False, None)


def _identify(rec: _Record) -> psutil.Process | None:
    """The recorded process if it still exists (zombie or not) and really is ours; None otherwise."""
    try:
        proc = psutil.Process(rec.pid)
        same = abs(proc.create_time() - rec.create_time) < 1.0
    except psutil.Error:
        return None
    return proc if same else None


def _foreign(rec: _Record) -> bool:
    """The pid exists but belongs to another process now: never signal it, nor its group."""
    if rec.pgid <= 1 or rec.pgid == os.getpgrp():  # a corrupt record must not take us (or init) down
        return True
    popen = _child(rec)
    if popen is not None and popen.returncode is None:  # unreaped: the pid cannot have been reused
        return False
    return psutil.pid_exists(rec.pid) and _identify(rec) is None


def _exit_status(rec: _Record) -> tuple[bool, int | None]:
    """(exited, exit code when known); a zombie counts as exited, and is reaped when it is our child."""
    if _child(rec) is not None:  # Popen knows for sure
        return _reap(rec)
    proc = _identify(rec)
    if proc is None:
        return True, None
    try:
        if proc.status() != psutil.STATUS_ZOMBIE:
            return False, None
    except psutil.Error:
        return True, None
    return True, _reap(rec)[1]


def _group_alive(pgid: int) -> bool:
    """Whether a non-zombie process is left in the group (zombies wait for a parent that may not be us)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


async def _terminate(rec: _Record, grace: float) -> None:
    """Signal the whole group, not just the leader: ``sh -c`` and any workers the app forked must go too.

    Only called when the leader is verifiably ours or gone; while a group exists the kernel does not hand its
    id out as a new pid, so a group whose leader is gone still holds only our leftovers.
    """

    def running() -> bool:
        _reap(rec)
        return _group_alive(rec.pgid)

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, _KILL_WAIT)):
        if not running():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pgid, sig)
        deadline = time.monotonic() + wait
        while running():
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL)
        else:
            return
    raise ProviderError(f"instance {rec.service} {rec.version} {rec.id} (pid {rec.pid}) still runs "
                        f"{_KILL_WAIT:g} s after SIGKILL")


# --- records and logs ---------------------------------------------------------------------------------------


def _settle(rec: _Record, path: Path) -> _Record:
    """Turn a running record whose process ended into an exited one, on disk too; return the current one."""
    if rec.state != "running":
        return rec
    exited, code = _exit_status(rec)
    if not exited:
        return rec
    rec = dataclasses.replace(rec, state="exited", exit_code=code, exited_at=time.time())
    if path.exists():  # a concurrent stop() may have removed it: do not bring it back
        _write(path, rec)
    _CHILDREN.pop(rec.pid, None)
    return rec


def _read(path: Path) -> _Record | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return _Record(**data)
    except (OSError, ValueError, TypeError):
        return None


def _write(path: Path, rec: _Record) -> None:
    write_json_atomic(path, dataclasses.asdict(rec))


def _log_tail(rec: _Record, lines: int = 3, limit: int = 400) -> str:
    """The last lines the process wrote (after our header), on one line: enough to say why it died."""
    try:
        with open(rec.log, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(rec.log_offset, size - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    out = " | ".join(kept)
    return out if len(out) <= limit else "…" + out[-limit:]
