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
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from releasegate.errors import HostUnreachable
from releasegate.spec.platforms import SshPlatform, split_host


@dataclass(frozen=True)
class Ran:
    """What a remote script printed and how it ended."""

    status: int
    out: str
    err: str


class HostPool:
    """Connections keyed by host entry (``app2.internal:2222``), each bound to the event loop that opened it
    (asyncssh connections cannot cross loops: ``status`` runs its own)."""

    def __init__(self, spec: SshPlatform) -> None:
        self.spec = spec
        self._conns: dict[str, tuple[asyncio.AbstractEventLoop, asyncssh.SSHClientConnection]] = {}
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}

    async def run(self, entry: str, script: str, args: list[str], limit: float, input: str = "") -> Ran:
        """``sh -c script rg args...`` on the host. A broken pooled connection is replaced once; a host that
        cannot be reached (or answers nothing within ``limit`` seconds) raises HostUnreachable naming it. ``input`` goes
        to the script's stdin (values that must not show in the host's process list, such as resolved secrets)."""
        line = "sh -c " + shlex.quote(script) + " rg " + " ".join(shlex.quote(a) for a in args)
        for attempt in (1, 2):
            conn = await self._connection(entry)
            try:
                done = await asyncio.wait_for(conn.run(line, check=False, input=input), limit)
            except TimeoutError:
                self._drop(entry, conn)
                raise HostUnreachable(entry, f"host {entry} unreachable: no answer within {limit:g}s") from None
            except (asyncssh.Error, OSError) as exc:
                self._drop(entry, conn)
                if attempt == 2:
                    raise HostUnreachable(entry, f"host {entry} unreachable: {_said(exc)}") from None
                continue  # the pooled connection died (the host rebooted, sshd restarted): connect again
            out, err = done.stdout, done.stderr
            return Ran(done.exit_status if done.exit_status is not None else -1,
                       out if isinstance(out, str) else "", err if isinstance(err, str) else "")
        raise AssertionError("unreachable")

    async def check(self, entry: str) -> None:
        """Connect (or reuse the connection); raises HostUnreachable with the one-line reason."""
        await self._connection(entry)

    async def close(self) -> None:
        for _, conn in list(self._conns.values()):
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        self._conns.clear()

    def _drop(self, entry: str, conn: asyncssh.SSHClientConnection) -> None:
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
