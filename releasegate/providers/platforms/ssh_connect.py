"""Connections to a fleet's hosts: one pooled asyncssh connection per host, reconnected when it breaks, and every
way of not getting in said in one line that names the host.

Why one line per cause: an operator reading "host app2.internal:2222: host key does not match" acts differently
from "unknown host" (check the fingerprint, add it) or "refused the key" (install the public key), and a deploy
that stops before starting anything must say which machine stopped it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from releasegate.errors import HostUnreachable
from releasegate.providers.platforms.ssh_shell import Shell, ShellGone
from releasegate.spec.platforms import SshPlatform, split_host


@dataclass(frozen=True)
class Ran:
    """What a remote script printed and how it ended."""

    status: int
    out: str
    err: str


SHELLS_PER_HOST = 4
"""Scripts running at once on one host; well under sshd's default MaxSessions (10) per connection."""


class HostPool:
    """Connections keyed by host entry (``app2.internal:2222``), each bound to the event loop that opened it
    (asyncssh connections cannot cross loops: ``status`` runs its own)."""

    def __init__(self, spec: SshPlatform) -> None:
        self.spec = spec
        self._conns: dict[str, tuple[asyncio.AbstractEventLoop, asyncssh.SSHClientConnection]] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}
        self._idle: dict[str, list[Shell]] = {}  # shells waiting for a script, per host
        self._slots: dict[tuple[int, str], asyncio.Semaphore] = {}  # at most SHELLS_PER_HOST scripts at once

    async def run(self, entry: str, script: str, args: list[str], limit: float, input: str = "") -> Ran:
        """``script`` with ``args`` as $1... on the host, through one of its long-lived shells (ssh_shell.py). A
        broken pooled connection is replaced once; a host that cannot be reached (or answers nothing within
        ``limit`` seconds) raises HostUnreachable naming it. ``input`` goes to the script's stdin (values that must
        not show in the host's process list, such as resolved secrets)."""
        loop = asyncio.get_running_loop()
        async with self._slots.setdefault((id(loop), entry), asyncio.Semaphore(SHELLS_PER_HOST)):
            return await self._run(entry, script, args, limit, input)

    async def _run(self, entry: str, script: str, args: list[str], limit: float, input: str) -> Ran:
        for attempt in (1, 2):
            conn = await self._connection(entry)
            shell: Shell | None = None
            try:
                shell = await self._shell(entry, conn, limit)
                status, out, err = await asyncio.wait_for(shell.call(script, args, input), limit)
            except asyncio.CancelledError:
                if shell is not None:
                    shell.close()  # it may be in the middle of the script: never hand it out again
                raise
            except TimeoutError:
                self._drop(entry, conn)
                raise HostUnreachable(entry, f"host {entry} unreachable: no answer within {limit:g}s") from None
            except (asyncssh.Error, OSError, ShellGone) as exc:
                self._drop(entry, conn)
                if attempt == 2:
                    raise HostUnreachable(entry, f"host {entry} unreachable: {_said(exc)}") from None
                continue  # the pooled connection died (the host rebooted, sshd restarted): connect again
            self._idle.setdefault(entry, []).append(shell)
            return Ran(status, out, err)
        raise AssertionError("unreachable")

    async def _shell(self, entry: str, conn: asyncssh.SSHClientConnection, limit: float) -> Shell:
        idle = self._idle.setdefault(entry, [])
        while idle:
            shell = idle.pop()
            if shell.conn is conn:
                return shell
            shell.close()
        return await asyncio.wait_for(Shell.open(conn), limit)

    async def check(self, entry: str) -> None:
        """Connect (or reuse the connection); raises HostUnreachable with the one-line reason."""
        await self._connection(entry)

    async def close(self) -> None:
        for shells in self._idle.values():
            for shell in shells:
                shell.close()
        self._idle.clear()
        for _, conn in list(self._conns.values()):
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        self._conns.clear()

    def _drop(self, entry: str, conn: asyncssh.SSHClientConnection) -> None:
        for shell in self._idle.pop(entry, []):
            shell.close()
        if self._conns.get(entry, (None, None))[1] is conn:
            del self._conns[entry]
        conn.abort()

    async def _connection(self, entry: str) -> asyncssh.SSHClientConnection:
        loop = asyncio.get_running_loop()
        async with self._locks.setdefault((id(loop), entry), asyncio.Lock()):
            pooled = self._conns.get(entry)
            if pooled is not None and pooled[0] is loop and not pooled[1].is_closed():
                return pooled[1]
            if pooled is not None and pooled[0] is loop:
                pooled[1].abort()
            conn = await self._connect(entry)
            self._conns[entry] = (loop, conn)
            return conn

    async def _connect(self, entry: str) -> asyncssh.SSHClientConnection:
        host, port = split_host(entry)
        spec = self.spec
        known = _expand(spec.known_hosts or "~/.ssh/known_hosts")
        if spec.strict_host_keys and not Path(known).is_file():
            raise HostUnreachable(entry, f"host {entry}: unknown host: the known_hosts file {known} does not exist; "
                                         f"create it with the host's checked key (ssh-keyscan -p {port} {host})")
        options: dict[str, object] = {"port": port, "known_hosts": known if spec.strict_host_keys else None}
        if spec.user:
            options["username"] = spec.user
        if spec.identity:
            options["client_keys"] = [_expand(spec.identity)]
        try:
            return await asyncio.wait_for(asyncssh.connect(host, **options), spec.connect_timeout)
        except TimeoutError:
            raise HostUnreachable(entry, f"host {entry} unreachable: no answer within {spec.connect_timeout:g}s "
                                         "(platform.connect_timeout)") from None
        except asyncssh.HostKeyNotVerifiable:
            raise HostUnreachable(entry, _key_problem(entry, host, port, known)) from None
        except asyncssh.PermissionDenied:
            who = spec.user or _local_user()
            key = f"the key {spec.identity}" if spec.identity else "every key offered (agent and ~/.ssh)"
            raise HostUnreachable(entry, f"host {entry} refused {key} for user {who}: add the public key to "
                                         f"~{who}/.ssh/authorized_keys there, or fix platform.identity") from None
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            raise HostUnreachable(entry, f"host {entry}: cannot use platform.identity {spec.identity}: {exc}; "
                                         "use an unencrypted key file or the SSH agent") from None
        except FileNotFoundError as exc:
            raise HostUnreachable(entry, f"host {entry}: cannot read {exc.filename}: fix platform.identity or "
                                         "platform.known_hosts") from None
        except (asyncssh.Error, OSError) as exc:
            raise HostUnreachable(entry, f"host {entry} unreachable: {_said(exc)}") from None


def _key_problem(entry: str, host: str, port: int, known: str) -> str:
    """Mismatch or unknown: the same asyncssh error, told apart by whether known_hosts lists the host at all."""
    listed = False
    with contextlib.suppress(Exception):
        keys = asyncssh.read_known_hosts(known).match(host, host, port)
        listed = bool(keys[0]) or bool(keys[1])
    if listed:
        return (f"host {entry}: host key does not match {known} (the host was reinstalled, or someone is in "
                f"between): check its fingerprint, then replace its line (ssh-keygen -R '{_name(host, port)}' "
                f"-f {known})")
    return (f"host {entry}: unknown host, not in {known} (strict host keys): check its fingerprint and add it "
            f"(ssh-keyscan -p {port} {host} >> {known})")


def _name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def _said(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is sshd running?)"
    if isinstance(exc, socket.gaierror):
        return f"name not known ({exc.strerror})"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"disconnected: {exc.reason or type(exc).__name__}"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


def _expand(path: str) -> str:
    return os.path.expanduser(path)


def _local_user() -> str:
    import getpass

    return getpass.getuser()
