"""Local processes as the platform: each instance is a shell command in its own session on a loopback port.

Instances must outlive the controller, so what we know about them lives in files, not in memory: one JSON
record per instance under ``state_dir/platform/local/<service>/`` (next to its log), read back by a restarted
controller or by the CLI in another process. A pid alone is not an identity (pids are reused), so each record
also keeps the process's create_time and nothing is signalled unless both match.

An instance whose process ended without ``stop()`` is not forgotten: its record turns to ``state: exited``
(with the exit code when this process was its parent) and ``dead_instances()`` reports it until ``stop()``
removes it, so a controller that was busy elsewhere still learns which instance died and why.

Nothing is started without a record: the intent (``state: starting``: service, version, id, port, log file, and
who is spawning it) is written before the spawn, and completed with the pid and process group right after. A
spawner killed in between leaves an intent and a running process that carries the intent's path in its
environment (``RELEASEGATE_INSTANCE``); whoever reads the records next (``status``, ``down``, ``gc``, a resumed
controller) adopts it, or drops the intent when nothing runs. The first look at a service's instances from a
process (``instances()``) also searches for processes of the service that have no record at all: one whose record
is free is adopted, a duplicate of a recorded instance is stopped (``reconcile``). Both write a line into the
instance's log.

A baseline (``analysis.baseline``) is recorded under its own version name, ``<previous>+baseline``, so stopping it
never touches the previous version's instances (and ``status``, ``down`` and ``gc`` see it as what it is), but runs
the previous version's command, working directory and RELEASEGATE_VERSION (``artifact_version``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import time
from pathlib import Path

import psutil

from releasegate.errors import ProviderError
from releasegate.fileio import next_number
from releasegate.providers.base import DeadInstance, Instance
from releasegate.providers.platforms.local_processes import (
    CHILDREN,
    HOST,
    MARKER,
    POLL,
    ProcessRecord,
    adopted,
    exit_status,
    foreign,
    free_port,
    groups,
    listening,
    log_tail,
    marked,
    owner_alive,
    read_record,
    rebuilt,
    settle,
    stop_group,
    terminate,
    this_process,
    write_record,
)
from releasegate.providers.platforms.starting import all_or_none, check_names
from releasegate.spec import models
from releasegate.spec.common import artifact_version

_PORT_ATTEMPTS = 3
_ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "errno 98")

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
        self._reconciled: set[str] = set()
        self._notes: list[str] = []  # what reconciling did, until ``reconcile`` hands it out

    # --- the Platform protocol ------------------------------------------------------------------------------

    async def start(self, service: str, version: str, count: int) -> list[Instance]:
        """Ensure ``count`` live instances of ``version``: the oldest live ones, plus new ones for the rest.

        Extra live instances are left alone (scaling down is a ``stop`` decision). If a new instance exits
        right away, the others this call started are stopped too and ProviderError says why, with the log's
        tail.
        """
        check_names(service, version)
        async with self._locks.setdefault(service, asyncio.Lock()):
            live = [i for i in await self.instances(service) if i.version == version]
            missing = count - len(live)
            if missing <= 0:
                return live[:count]
            cwd = self._cwd(service, version)
            started = await all_or_none((self._start_one(service, version, cwd) for _ in range(missing)),
                                        lambda inst: self.stop(inst, grace=min(self.spec.stop_grace, 5.0)))
            return live + started

    async def stop(self, instance: Instance, grace: float) -> None:
        """SIGTERM the instance's process group, SIGKILL what is left after ``grace``, forget the instance.

        Idempotent: an instance already gone (or never known) just loses its record; one that exited loses what
        it left running in its group too. A record whose pid now belongs to another process (create_time differs)
        is dropped without signalling anything.
        """
        path = self._record_path(instance.service, instance.version, instance.id)
        rec = read_record(path)
        if rec is not None and rec.state in ("running", "exited") and not foreign(rec):
            await terminate(rec, grace)
        path.unlink(missing_ok=True)
        if rec is not None:
            CHILDREN.pop(rec.pid, None)

    async def instances(self, service: str) -> list[Instance]:
        """Live instances of every version, oldest first; records of ended processes are marked exited. The first
        call for a service also reconciles it with what really runs (``reconcile``)."""
        if service not in self._reconciled:
            await self._reconcile(service)
        return self.running(service)

    def running(self, service: str) -> list[Instance]:
        """``instances()`` for callers without an event loop (``status``): reading records never blocks long."""
        return [rec.instance() for rec in self._refresh(service) if rec.state == "running"]

    async def alive(self, instance: Instance) -> bool:
        rec = self._refreshed(instance)
        return rec is not None and rec.state == "running"

    async def reconcile(self, service: str) -> list[str]:
        """Find every process releasegate started for ``service`` (by the marker in its environment) and make the
        records say so: one without a record is adopted into it, a duplicate of a recorded instance (or what is
        left of one that exited) is stopped. Returns what was done since the last call, one line each (also
        written to the instances' logs), intents adopted by any earlier look included."""
        await self._reconcile(service)
        said, self._notes = self._notes, []
        return said

    async def _reconcile(self, service: str) -> None:
        self._reconciled.add(service)
        directory = self.service_dir(service)
        if directory.is_dir():
            self._refresh(service)  # intents first, and exits settled
            await self._search(service, directory)

    async def _search(self, service: str, directory: Path) -> None:
        said = self._notes
        for marker, procs in marked(str(directory.resolve()) + os.sep).items():
            path = Path(marker)
            for pgid, leader in sorted(groups(procs).items(), key=lambda group: group[1][1]):  # oldest first
                rec = read_record(path)
                if rec is not None and rec.state == "running" and rec.pgid == pgid:
                    continue  # recorded
                if rec is not None and rec.state == "starting" and owner_alive(rec):
                    continue  # its spawner records it in a moment
                found = rebuilt(marker, procs, pgid, leader) if rec is None else None
                if found is not None and found.service == service:
                    write_record(path, found)
                    said.append(_note(found, f"adopted: {found.version} {found.id} on {found.host}:{found.port} "
                                      f"(pid {found.pid}) ran without a record"))
                    continue
                why = ("no record can take it" if rec is None else "left over from an instance that exited"
                       if rec.state == "exited" else f"a duplicate of the recorded instance (pid {rec.pid})")
                line = f"stopped process group {pgid} (pid {leader[0]}) marked as {path.stem}: {why}"
                await stop_group(pgid, leader, min(self.spec.stop_grace, 5.0))
                said.append(_note(rec, line) if rec is not None else line)

    async def preflight(self, service: str, version: str) -> list[tuple[str, bool, str]]:
        """The command resolves and its working directory exists (``releasegate.preflight`` words the check)."""
        from releasegate.preflight import _command

        check = _command(self.spec, service, self.spec_dir, version)
        return [(check.name, check.ok, check.detail)]

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
        cwd = (self.spec_dir / self.spec.cwd_for(service, artifact_version(version))).resolve()
        if not cwd.is_dir():
            raise ProviderError(f"instance {service} {version}: working directory {cwd} does not exist "
                                f"(platform.cwd {self.spec.cwd!r}, relative to {self.spec_dir})")
        return cwd

    def _refresh(self, service: str) -> list[ProcessRecord]:
        directory = self.service_dir(service)
        paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
        records = []
        for path in paths:
            rec = read_record(path)
            if rec is not None and rec.state == "starting":
                rec = self._resolve_intent(rec, path)
            if rec is not None:
                records.append(settle(rec, path))
        return sorted(records, key=lambda r: (r.started_at, r.id))

    def _resolve_intent(self, rec: ProcessRecord, path: Path) -> ProcessRecord | None:
        """An intent whose spawner is gone: the process it names (by marker) is adopted; none runs, it is dropped.
        While the spawner lives, the intent is its business (it records the process in a moment)."""
        if owner_alive(rec):
            return None
        found = groups(marked(rec.marker).get(rec.marker, [])) if rec.marker else {}
        if not found:
            path.unlink(missing_ok=True)
            return None
        pgid, leader = min(found.items(), key=lambda group: group[1][1])  # the oldest group (there is one)
        spawner = rec.owner
        rec = adopted(rec, pgid, leader)
        write_record(path, rec)
        self._notes.append(_note(rec, f"adopted: pid {rec.pid} on {rec.host}:{rec.port} runs, but its spawner "
                                      f"(pid {spawner}) ended before recording it"))
        return rec

    def _refreshed(self, instance: Instance) -> ProcessRecord | None:
        path = self._record_path(instance.service, instance.version, instance.id)
        rec = read_record(path)
        return None if rec is None else settle(rec, path)

    def _dead(self, rec: ProcessRecord) -> DeadInstance:
        return DeadInstance(rec.instance(), rec.exit_code, log_tail(rec), rec.exited_at or 0.0)

    def _next_id(self, service: str) -> str:
        """A per-service counter under a file lock: ids stay unique across restarts and processes."""
        return f"{next_number(self.service_dir(service) / 'next-id'):04d}"

    async def _start_one(self, service: str, version: str, cwd: Path) -> Instance:
        self.service_dir(service).mkdir(parents=True, exist_ok=True)
        id = self._next_id(service)
        path = self._record_path(service, version, id)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            intent = self._intent(service, version, id, cwd, free_port(), path)
            write_record(path, intent)  # before the spawn: a spawner killed next leaves a findable process
            try:
                rec = self._spawn(intent)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
            write_record(path, rec)
            code = await self._watch_start(rec)
            if code is None:
                return rec.instance()
            path.unlink(missing_ok=True)
            CHILDREN.pop(rec.pid, None)
            tail = log_tail(rec)
            if attempt < _PORT_ATTEMPTS and any(s in tail.lower() for s in _ADDRESS_IN_USE):
                continue  # someone took the port between our probe and the app's bind: try another one
            hint = " (the command must keep running in the foreground)" if code == 0 else ""
            raise ProviderError(f"instance {service} {version} exited with code {code} right after start"
                                f"{hint}: {tail or '(no output)'} (log: {rec.log})")
        raise AssertionError("unreachable")

    def _intent(self, service: str, version: str, id: str, cwd: Path, port: int, path: Path) -> ProcessRecord:
        """The record of an instance about to be spawned: everything but its process, and who spawns it. The log
        gets its header first, so the record knows where the process's own output starts."""
        command = self.spec.command_for(service, artifact_version(version), port, HOST)
        log_path = self.service_dir(service) / f"{version}-{id}.log"
        with open(log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log.write(f"--- releasegate {stamp}: {service} {version} {id} on {HOST}:{port}: {command}\n"
                      .encode())
            offset = log.tell()
        owner, owner_started = this_process()
        return ProcessRecord(service, version, id, port, 0, 0, str(log_path), offset, time.time(), 0.0, command,
                             str(cwd), state="starting", marker=str(path.resolve()), owner=owner,
                             owner_started=owner_started)

    def _spawn(self, intent: ProcessRecord) -> ProcessRecord:
        """Start the intent's process in its own session; the returned record names it (not yet written)."""
        service, port = intent.service, intent.port
        version = artifact_version(intent.version)  # a baseline runs the previous version's artifact
        env = {**os.environ, **self.spec.env_for(service, version, port, HOST), "PORT": str(port),
               "RELEASEGATE_VERSION": version, "RELEASEGATE_SERVICE": service, MARKER: intent.marker}
        with open(intent.log, "ab") as log:
            try:
                popen = subprocess.Popen(["/bin/sh", "-c", intent.command], cwd=intent.cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
            except OSError as exc:
                msg = f"instance {service} {version}: cannot run /bin/sh in {intent.cwd}: {exc}"
                raise ProviderError(msg) from exc
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:  # cannot happen while unreaped; keep a record anyway so the exit is reported
            create_time = 0.0
        CHILDREN[popen.pid] = (popen, create_time)
        return dataclasses.replace(intent, pid=popen.pid, pgid=popen.pid, create_time=create_time,
                                   state="running", started_at=time.time(), owner=0, owner_started=0.0)

    async def _watch_start(self, rec: ProcessRecord) -> int | None:
        """The exit code if the process ends within the grace; None once it listens or the grace is over."""
        deadline = time.monotonic() + self.startup_grace
        while True:
            exited, code = exit_status(rec)
            if exited:
                return code if code is not None else -1
            if listening(rec) or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(POLL)


def _note(rec: ProcessRecord, line: str) -> str:
    """Append what reconciling did to the instance's log (where whoever looks at the instance looks); returns it."""
    said = f"instance {rec.service} {rec.version} {rec.id}: {line}"
    with contextlib.suppress(OSError), open(rec.log, "a") as log:
        log.write(f"--- releasegate {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {line}\n")
    return said
