"""The process side of the local platform: spawn records on disk, identity checks that survive pid reuse,
reaping, terminating a whole process group, and reading what a dead process last wrote.

``LocalPlatform`` (local.py) decides what to start and stop; this module knows how a process is safely observed
and signalled. A pid alone is not an identity, so nothing is signalled unless the recorded create_time matches.

A process is also found without its pid: each one gets ``RELEASEGATE_INSTANCE=<its record's path>`` in its
environment (``MARKER``), readable in ``/proc/PID/environ`` by the same user, so a process whose record was never
completed (its spawner was killed in between) is still known as ours, and as which instance (``marked``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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

HOST = "127.0.0.1"
_KILL_WAIT = 5.0
POLL = 0.02
MARKER = "RELEASEGATE_INSTANCE"

CHILDREN: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
"""Every process this Python process spawned, with its create_time, shared by all LocalPlatform objects so
that any of them can reap a child (and learn its exit code) whichever object started it."""


@dataclass
class ProcessRecord:
    """What a restarted controller (or the CLI in another process) needs to find, judge and stop an instance."""

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
    state: str = "running"  # or "exited"; "starting": the intent, written before the spawn (pid not known yet)
    exit_code: int | None = None
    exited_at: float | None = None
    marker: str = ""  # MARKER's value in the process's environment
    owner: int = 0  # who writes the intent: the spawning releasegate process (pid, create_time)
    owner_started: float = 0.0

    def instance(self) -> Instance:
        return Instance(self.service, self.version, self.id, self.host, self.port, self.pid, self.log,
                        self.started_at)



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def listening(rec: ProcessRecord) -> bool:
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


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _child(rec: ProcessRecord) -> subprocess.Popen[bytes] | None:
    popen, create_time = CHILDREN.get(rec.pid, (None, 0.0))
    return popen if popen is not None and create_time == rec.create_time else None


def _reap(rec: ProcessRecord) -> tuple[bool, int | None]:
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


def _identify(rec: ProcessRecord) -> psutil.Process | None:
    """The recorded process if it still exists (zombie or not) and really is ours; None otherwise."""
    try:
        proc = psutil.Process(rec.pid)
        same = abs(proc.create_time() - rec.create_time) < 1.0
    except psutil.Error:
        return None
    return proc if same else None


def foreign(rec: ProcessRecord) -> bool:
    """The pid exists but belongs to another process now: never signal it, nor its group."""
    if rec.pgid <= 1 or rec.pgid == os.getpgrp():  # a corrupt record must not take us (or init) down
        return True
    popen = _child(rec)
    if popen is not None and popen.returncode is None:  # unreaped: the pid cannot have been reused
        return False
    return psutil.pid_exists(rec.pid) and _identify(rec) is None


def exit_status(rec: ProcessRecord) -> tuple[bool, int | None]:
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


async def terminate(rec: ProcessRecord, grace: float) -> None:
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
            await asyncio.sleep(POLL)
        else:
            return
    raise ProviderError(f"instance {rec.service} {rec.version} {rec.id} (pid {rec.pid}) still runs "
                        f"{_KILL_WAIT:g} s after SIGKILL")


# --- finding processes by their marker ----------------------------------------------------------------------------


def this_process() -> tuple[int, float]:
    """(pid, create_time) of this process: the owner written into an intent."""
    return os.getpid(), psutil.Process().create_time()


def owner_alive(rec: ProcessRecord) -> bool:
    """Whether the process that wrote an intent still runs (and so may still record what it spawned)."""
    try:
        return abs(psutil.Process(rec.owner).create_time() - rec.owner_started) < 1.0
    except psutil.Error:
        return False


def marked(prefix: str) -> dict[str, list[psutil.Process]]:
    """This user's live processes whose MARKER starts with ``prefix``, by marker (an instance's ``sh -c`` and
    everything it started carry the same one). Other users' environments are not readable, and are not ours."""
    needle = f"{MARKER}={prefix}".encode()
    found: dict[str, list[psutil.Process]] = {}
    for pid in psutil.pids():
        if pid == os.getpid():
            continue
        try:
            if not _mentions(pid, needle):  # cheap: most processes are not ours
                continue
            proc = psutil.Process(pid)
            if proc.uids().real != os.getuid():
                continue
            value = proc.environ().get(MARKER, "")
        except (psutil.Error, OSError):  # gone, a zombie, or not readable
            continue
        if value.startswith(prefix):
            found.setdefault(value, []).append(proc)
    return found


def _mentions(pid: int, needle: bytes) -> bool:
    """Whether the process's environment holds ``needle``: one read of /proc/PID/environ where there is one."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return False  # the process is gone
    return True  # no /proc: psutil asks the system


def groups(procs: list[psutil.Process]) -> dict[int, tuple[int, float]]:
    """Process group -> (pid, create_time) of its leader, or of its oldest member once the leader is gone."""
    members: dict[int, list[tuple[float, int]]] = {}
    for proc in procs:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            members.setdefault(os.getpgid(proc.pid), []).append((proc.create_time(), proc.pid))
        except (psutil.Error, OSError):
            continue
    out = {}
    for pgid, found in members.items():
        leader = next(((t, p) for t, p in found if p == pgid), min(found))
        out[pgid] = (leader[1], leader[0])
    return out


def adopted(rec: ProcessRecord, pgid: int, leader: tuple[int, float]) -> ProcessRecord:
    """``rec`` (an intent, or one rebuilt from a marker) as the record of the running group it names."""
    pid, create_time = leader
    return dataclasses.replace(rec, pid=pid, pgid=pgid, create_time=create_time, state="running",
                               started_at=rec.started_at or create_time, owner=0, owner_started=0.0)


def rebuilt(marker: str, procs: list[psutil.Process], pgid: int, leader: tuple[int, float]) -> ProcessRecord | None:
    """A record for marked processes that have none: service, version and id from the marker (the record's path),
    the port from their environment; None when the marker or the environment does not say."""
    path = Path(marker)
    name = path.name.removesuffix(".json")
    version, _, id = name.rpartition("-")
    proc = next((p for p in procs if p.pid == leader[0]), procs[0])
    try:
        port = int(proc.environ().get("PORT", ""))
        cmdline = proc.cmdline()
        cwd = proc.cwd()
    except (psutil.Error, OSError, ValueError):
        return None
    if not version or not id.isdigit():
        return None
    command = cmdline[2] if cmdline[:2] == ["/bin/sh", "-c"] and len(cmdline) > 2 else " ".join(cmdline)
    log = path.with_name(f"{name}.log")
    rec = ProcessRecord(path.parent.name, version, id, port, 0, 0, str(log), 0, 0.0, 0.0, command, cwd,
                        marker=marker)
    return adopted(rec, pgid, leader)


async def stop_group(pgid: int, leader: tuple[int, float], grace: float) -> None:
    """Stop a marked group that no record can take (a duplicate of a recorded instance)."""
    pid, create_time = leader
    rec = ProcessRecord("", "", "", 0, pid, pgid, "", 0, 0.0, create_time, "", "")
    if not foreign(rec):
        await terminate(rec, grace)


# --- records and logs ---------------------------------------------------------------------------------------


def settle(rec: ProcessRecord, path: Path) -> ProcessRecord:
    """Turn a running record whose process ended into an exited one, on disk too; return the current one."""
    if rec.state != "running":
        return rec
    exited, code = exit_status(rec)
    if not exited:
        return rec
    rec = dataclasses.replace(rec, state="exited", exit_code=code, exited_at=time.time())
    if path.exists():  # a concurrent stop() may have removed it: do not bring it back
        write_record(path, rec)
    CHILDREN.pop(rec.pid, None)
    return rec


def read_record(path: Path) -> ProcessRecord | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return ProcessRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_record(path: Path, rec: ProcessRecord) -> None:
    write_json_atomic(path, dataclasses.asdict(rec))


def log_tail(rec: ProcessRecord, lines: int = 3, limit: int = 400) -> str:
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
