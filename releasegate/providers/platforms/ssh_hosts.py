"""A fleet of hosts reached over SSH as the platform: each instance is a process (``run: command``) or a container
(``run: docker``, ssh_docker.py) on one host, a ``host:port`` backend.

Why the hosts keep the records: a controller may be restarted, or run from another machine with the same state
dir, and must find what runs without trusting its memory. Each host keeps its instances' records under
``~/.releasegate/<state-id>/<host>/<service>/`` (ssh_remote.py says which files); the state id comes from the
controller's state dir, so two installations never read each other's instances, and the host's name is in the
path because home directories shared over NFS would otherwise mix hosts. Containers are their own record: their
labels name the state id and host.

An unreachable host is not a dead instance: its instances are reported as last seen (kept in
``state_dir/platform/ssh/<service>.json``), ``unreachable`` names the host and why, and anything that must change
something on it (start, stop) raises ``HostUnreachable``, which the controller retries instead of counting deaths
(docs/ssh.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import re
import secrets
import shlex
import socket
import time
from pathlib import Path

from releasegate.errors import HostUnreachable, ProviderError
from releasegate.fileio import write_json_atomic
from releasegate.providers.base import DeadInstance, Instance
from releasegate.providers.platforms import ssh_docker as dk
from releasegate.providers.platforms import ssh_remote as sh
from releasegate.providers.platforms.ssh_connect import HostPool
from releasegate.providers.platforms.starting import check_names
from releasegate.spec import models, placeholders
from releasegate.spec import secrets as spec_secrets
from releasegate.spec.common import artifact_version
from releasegate.spec.platforms import split_host

_PORT_ATTEMPTS = 3
_ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "errno 98")
_QUIET = 2.0  # seconds a host that just failed is taken as still unreachable without asking it
_STARTING_FOR = 30.0  # a record whose process never recorded itself is dead after this long


class SshPlatform:
    """The ``ManagedPlatform`` for ``platform: {kind: ssh}``; see the module docstring."""

    def __init__(self, spec: models.SshPlatform, state_dir: Path, spec_dir: Path, *,
                 startup_grace: float = 1.0) -> None:
        """``startup_grace``: how long a start watches the new process for an early exit (less once it listens)."""
        self.spec = spec
        self.state_dir = Path(state_dir)
        self.spec_dir = Path(spec_dir)
        self.startup_grace = startup_grace
        self.pool = HostPool(spec)
        self.state_id = hashlib.sha256(f"{socket.gethostname()}:{self.state_dir.resolve()}".encode()).hexdigest()[:12]
        self.unreachable: dict[str, str] = {}  # host entry -> why, as of the last look
        self._locks: dict[str, asyncio.Lock] = {}
        self._told: set[str] = set()
        self._quiet: dict[str, float] = {}  # host entry -> until when a failed host is not asked again

    # --- the Platform protocol ------------------------------------------------------------------------------

    async def start(self, service: str, version: str, count: int) -> list[Instance]:
        """Ensure ``count`` live instances of ``version``: the live ones, plus new ones placed on the hosts with the
        fewest of this version, then the fewest of the service (so fewer than the fleet go on the first hosts, and
        a host emptied by a rolling batch is refilled first). Nothing starts when a chosen host is unreachable;
        when one new instance fails, the others this call started are stopped again."""
        check_names(service, version)
        self._runnable()
        async with self._locks.setdefault(service, asyncio.Lock()):
            everything = await self.instances(service)
            live = [i for i in everything if i.version == version]
            missing = count - len(live)
            if missing <= 0:
                return live[:count]
            plan = self._place(everything, version, missing)
            blocked = [e for e in plan if e in self.unreachable]
            if blocked:
                raise HostUnreachable(blocked[0], f"{self.unreachable[blocked[0]]}; nothing was started")
            stamp = time.time()
            token = secrets.token_hex(3)
            results = await asyncio.gather(*(self._start_on(entry, service, version, n, stamp, token)
                                             for entry, n in plan.items()), return_exceptions=True)
            started = [i for r in results if isinstance(r, list) for i in r]
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                for inst in started:
                    await self.stop(inst, min(self.spec.stop_grace, 5.0))
                raise failure
            seen = self._last_seen(service)
            for entry in plan:
                self._remember(service, entry, seen.get(entry, []) + [i for i in started if _entry_of(i) == entry])
            return live + sorted(started, key=lambda i: i.id)

    async def stop(self, instance: Instance, grace: float) -> None:
        """SIGTERM to the instance's process group on its host, SIGKILL after ``grace``; its record goes. Idempotent;
        raises HostUnreachable (the controller retries) when the host cannot be reached."""
        entry = _entry_of(instance)
        if self.spec.run == "docker":
            name = (instance.ref or "").rpartition("/")[2]
            ran = await self.pool.run(entry, dk.STOP, [self._cli, name, str(int(grace))], grace + 30)
        else:
            ran = await self.pool.run(entry, sh.STOP, [self._dir(entry, instance.service),
                                                       f"{instance.version}-{instance.id}",
                                                       str(int(grace / sh.STEP))], grace + 20)
        if ran.status != 0 or "stopped" not in ran.out:
            raise ProviderError(f"instance {instance.service} {instance.version} {instance.id} on host {entry} "
                                f"({instance.ref}) still runs after SIGKILL: {ran.out.strip() or ran.err.strip()}")
        self._forget(instance.service, entry, instance)

    async def instances(self, service: str) -> list[Instance]:
        """Live instances of every version, read from every host; an unreachable host's are its last seen ones."""
        found = await self._read(service)
        live: list[Instance] = []
        for entry in self.spec.hosts:
            if entry in found:
                live += [r.instance for r in found[entry] if r.state == "alive"]
            else:
                live += self._last_seen(service).get(entry, [])
        return sorted(live, key=lambda i: (i.started_at, i.id))

    async def alive(self, instance: Instance) -> bool:
        """Unknown counts as alive: an unreachable host's instance is not reported dead (the router's own checks
        still see whether it answers)."""
        entry = _entry_of(instance)
        found = await self._read_one(entry, instance.service)
        if found is None:
            return True
        return any(r.instance.id == instance.id and r.state == "alive" for r in found)

    def running(self, service: str) -> list[Instance]:
        """``instances()`` for callers without an event loop (``status``): a fresh pool in a thread of its own."""
        other = SshPlatform(self.spec, self.state_dir, self.spec_dir)

        async def look() -> list[Instance]:
            try:
                return await other.instances(service)
            finally:
                await other.pool.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            found = pool.submit(asyncio.run, look()).result()
        self.unreachable = dict(other.unreachable)
        return found

    async def reconcile(self, service: str) -> list[str]:
        """The hosts' records are the truth (nothing to adopt); what it says is which hosts cannot be reached."""
        await self._read(service)
        lines = []
        for entry, why in self.unreachable.items():
            if entry not in self._told:
                seen = len(self._last_seen(service).get(entry, []))
                lines.append(f"{why}; its {seen} instance(s) last seen there are unknown, not dead")
                self._told.add(entry)
        self._told &= set(self.unreachable)
        return lines

    async def dead_instances(self, service: str) -> list[DeadInstance]:
        """Instances whose process ended without ``stop()`` on a host that answers, until ``stop`` clears them."""
        found = await self._read(service)
        return [self._dead(r) for entry in self.spec.hosts for r in found.get(entry, []) if self._is_dead(r)]

    async def exit_info(self, instance: Instance) -> DeadInstance | None:
        found = await self._read_one(_entry_of(instance), instance.service) or []
        return next((self._dead(r) for r in found if r.instance.id == instance.id and self._is_dead(r)), None)

    async def preflight(self, service: str, version: str) -> list[tuple[str, bool, str]]:
        """Every host, in parallel: reachable with a trusted key and an accepted login, the command's program and
        working directory there. Starts nothing."""
        missing = self.spec.missing_for_run()
        if missing is not None:
            return [("platform", False, missing)]
        if self.spec.run == "docker":
            image = self.spec.image_for(service, version)
            limit = self.spec.connect_timeout * 2
            return list(await asyncio.gather(*(dk.preflight(self.pool, e, self.spec.docker_cli, image, self.spec.pull,
                                                            limit) for e in self.spec.hosts)))
        cwd = self._cwd(service, version)
        command = self._command(service, version, 0, "HOST")
        try:
            words = shlex.split(command)
            program = "-" if any(c in command for c in "|&;<>()$`\\\"'*?[#~=%") else words[0]
        except (ValueError, IndexError):
            return [("command", False, f"cannot read platform.command {command!r}: fix its quoting")]
        limit = self.spec.connect_timeout * 2
        return list(await asyncio.gather(*(sh.preflight(self.pool, e, cwd, program, limit) for e in self.spec.hosts)))

    async def close(self) -> None:
        await self.pool.close()

    # --- reading the hosts ----------------------------------------------------------------------------------

    async def _read(self, service: str) -> dict[str, list[sh.Remote]]:
        got = await asyncio.gather(*(self._read_one(e, service) for e in self.spec.hosts))
        return {e: r for e, r in zip(self.spec.hosts, got, strict=True) if r is not None}

    async def _read_one(self, entry: str, service: str) -> list[sh.Remote] | None:
        """The host's records, or None when it cannot be reached (``unreachable`` says why)."""
        if time.monotonic() < self._quiet.get(entry, 0.0) and entry in self.unreachable:
            return None  # it just failed: asking again at once would cost every look connect_timeout
        docker = self.spec.run == "docker"
        script, args = (dk.LIST, [self._cli, self.label(entry), service, dk.TEMPLATE]) if docker else \
            (sh.LIST, [self._dir(entry, service)])
        try:
            ran = await self.pool.run(entry, script, args, self.spec.connect_timeout)
        except HostUnreachable as exc:
            self.unreachable[entry] = str(exc)
            self._quiet[entry] = time.monotonic() + min(self.spec.connect_timeout, _QUIET)
            return None
        if ran.status != 0:  # it answers, but its records cannot be read: unknown, exactly as unreachable
            why = (ran.err.strip() or ran.out.strip() or f"exit status {ran.status}").splitlines()[-1]
            where = f"{self.spec.docker_cli} ps" if docker else f"the records in {self._dir(entry, service)}"
            self.unreachable[entry] = f"host {entry}: cannot read {where}: {why}"
            return None
        self.unreachable.pop(entry, None)
        found = dk.parse_list(ran.out, entry, service) if docker else sh.parse_list(ran.out, entry)
        self._remember(service, entry, [r.instance for r in found if r.state == "alive"])
        return found

    def _is_dead(self, r: sh.Remote) -> bool:
        late = time.time() - r.instance.started_at > _STARTING_FOR
        return r.state in ("dead", "oom") or (r.state == "starting" and late)

    def _dead(self, r: sh.Remote) -> DeadInstance:
        code = r.exit_code
        if code is not None and code > 128:  # the wrapper shell reports a signal as 128 + its number
            code = -(code - 128)
        cause = {"starting": "never recorded its process (its start was interrupted)",
                 "oom": "was OOM-killed"}.get(r.state)
        return DeadInstance(r.instance, code, r.tail, time.time(), cause)

    # --- last seen: what an unreachable host ran when it last answered ---------------------------------------

    def _seen_path(self, service: str) -> Path:
        return self.state_dir / "platform" / "ssh" / f"{service}.json"

    def _last_seen(self, service: str) -> dict[str, list[Instance]]:
        try:
            data = json.loads(self._seen_path(service).read_text())
            return {e: [Instance(**i) for i in items] for e, items in data.items()}
        except (OSError, ValueError, TypeError):
            return {}

    def _remember(self, service: str, entry: str, live: list[Instance]) -> None:
        seen = self._last_seen(service)
        if seen.get(entry, []) == live:
            return
        seen[entry] = live
        self._seen_path(service).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._seen_path(service),
                          {e: [dataclasses.asdict(i) for i in items] for e, items in seen.items()})

    def _forget(self, service: str, entry: str, instance: Instance) -> None:
        seen = self._last_seen(service)
        if entry in seen:
            self._remember(service, entry, [i for i in seen[entry] if i.id != instance.id])

    # --- starting -------------------------------------------------------------------------------------------

    def _place(self, everything: list[Instance], version: str, missing: int) -> dict[str, int]:
        """Host entry -> how many new instances go there. A baseline (``<previous>+baseline``) avoids the hosts
        that run another version than its own and its artifact's, the canary's: a canary that hurts its machine
        (disk, memory, a config file there) would hurt a baseline beside it too and hide the difference the
        comparison looks for (docs/ssh.md)."""
        per_host = self.spec.instances_per_host
        mine = {e: 0 for e in self.spec.hosts}
        total = dict(mine)
        other = dict(mine)
        ours = {version, artifact_version(version)}
        for inst in everything:
            entry = _entry_of(inst)
            if entry in total:
                total[entry] += 1
                mine[entry] += inst.version == version
                other[entry] += inst.version not in ours
        avoid = version != artifact_version(version)
        plan: dict[str, int] = {}
        order = {e: i for i, e in enumerate(self.spec.hosts)}
        for _ in range(missing):
            entry = min(self.spec.hosts, key=lambda e: (mine[e] >= per_host, avoid and other[e] > 0, mine[e],
                                                        total[e], order[e]))
            plan[entry] = plan.get(entry, 0) + 1
            mine[entry] += 1
            total[entry] += 1
        return plan

    async def _start_on(self, entry: str, service: str, version: str, n: int, stamp: float,
                        token: str) -> list[Instance]:
        index = self.spec.hosts.index(entry) + 1
        ran = await self.pool.run(entry, sh.PORTS, [str(n * _PORT_ATTEMPTS), str(secrets.randbelow(2**31))],
                                  self.spec.connect_timeout + 10)
        ports = [int(p) for p in ran.out.split() if p.isdigit()]
        if len(ports) < n:
            raise ProviderError(f"host {entry}: no free port found for {service} {version} ({ran.err.strip()})")
        started: list[Instance] = []
        try:
            for k in range(n):
                id = f"{token}h{index:03d}i{k + 1}"
                started.append(await self._start_one(entry, service, version, id, stamp, ports[k::n]))
        except BaseException:
            for inst in started:
                await self.stop(inst, min(self.spec.stop_grace, 5.0))
            raise
        return started

    async def _start_one(self, entry: str, service: str, version: str, id: str, stamp: float,
                         ports: list[int]) -> Instance:
        if self.spec.run == "docker":
            return await dk.start_instance(self, entry, service, version, id, stamp, ports)
        host, _ = split_host(entry)
        directory = self._dir(entry, service)
        run = artifact_version(version)  # the record keeps the version's own name (a baseline's), the app its artifact
        cwd = self._cwd(service, run)
        for attempt, port in enumerate(ports, 1):
            command = self._command(service, run, port, host)
            log = f"{directory if directory.startswith('/') else '~/' + directory}/{version}-{id}.log"
            inst = Instance(service, version, id, host, port, None, f"{entry}:{log}", stamp, None)
            env = {**self.spec_env(service, run, port, host), "RELEASEGATE_VERSION": run,
                   "RELEASEGATE_SERVICE": service}
            ran = await self.pool.run(entry, sh.START, [
                directory, f"{version}-{id}", str(port), cwd, command, str(max(1, int(self.startup_grace / sh.STEP))),
                sh.record(inst, command, cwd), sh.WRAPPER], self.startup_grace + self.spec.connect_timeout + 20,
                input="".join(f"{k}={v}\n" for k, v in env.items()))
            words = ran.out.split()
            if ran.status == 0 and words[:1] in (["listening"], ["running"]) and len(words) >= 2:
                return dataclasses.replace(inst, ref=f"{entry}/{int(words[1])}")  # pid: local processes only
            tail = " | ".join(line.strip() for line in ran.out.splitlines()[1:] if line.strip())
            if words[:1] == ["exited"] and len(words) >= 3:
                await self.stop(dataclasses.replace(inst, ref=f"{entry}/{words[2]}"), 0.0)
                if attempt < len(ports) and any(s in tail.lower() for s in _ADDRESS_IN_USE):
                    continue  # someone took the port between our look and the app's bind: another one
                hint = " (the command must keep running in the foreground)" if words[1] == "0" else ""
                raise ProviderError(f"instance {service} {version} on host {entry} exited with code {words[1]} "
                                    f"right after start{hint}: {tail or '(no output)'} (log: {inst.log})")
            # A start that never ran leaves no record behind (it would be reported as a death later).
            await self.stop(dataclasses.replace(inst, ref=f"{entry}/-"), 0.0)
            raise ProviderError(f"instance {service} {version} on host {entry} did not start: "
                                f"{(ran.out + ran.err).strip() or f'exit status {ran.status}'} (log: {inst.log})")
        raise AssertionError("unreachable")

    def spec_env(self, service: str, version: str, port: int, host: str) -> dict[str, str]:
        values = _values(service, version, port, host)
        return {k: spec_secrets.resolve(placeholders.substitute_text(v, values), f"platform.env.{k}")
                for k, v in self.spec.env.items()}

    # --- names and places -----------------------------------------------------------------------------------

    def _runnable(self) -> None:
        if (missing := self.spec.missing_for_run()) is not None:
            raise ProviderError(missing)

    @property
    def _cli(self) -> str:
        return dk.cli_words(self.spec.docker_cli)

    def label(self, entry: str) -> str:
        """The state label of this installation's containers on ``entry``."""
        return f"{self.state_id}/{re.sub(r'[^A-Za-z0-9.-]', '_', entry)}"

    def _dir(self, entry: str, service: str) -> str:
        """Absolute, or relative to the login directory (sshd starts every command there)."""
        root = self.spec.remote_dir.removeprefix("~").removeprefix("/") if self.spec.remote_dir.startswith("~") \
            else self.spec.remote_dir
        return f"{root or '.'}/{self.state_id}/{re.sub(r'[^A-Za-z0-9.-]', '_', entry)}/{service}"

    def _cwd(self, service: str, version: str) -> str:
        cwd = self.spec.cwd
        return "." if cwd is None else placeholders.substitute_text(cwd, {"service": service, "version": version})

    def _command(self, service: str, version: str, port: int, host: str) -> str:
        return placeholders.substitute_text(self.spec.command or "", _values(service, version, port, host))


def _entry_of(instance: Instance) -> str:
    """The host entry an instance runs on: its ``ref`` is ``entry/pid``."""
    if not instance.ref or "/" not in instance.ref:
        raise ProviderError(f"instance {instance.service} {instance.version} {instance.id} does not say which "
                            "host it runs on")
    return instance.ref.rpartition("/")[0]


def _values(service: str, version: str, port: int, host: str) -> dict[str, object]:
    return {"service": service, "version": version, "port": port, "host": host}
