"""SSH "hosts" for tests: each one a network namespace with a veth pair to this namespace and its own OpenSSH server.

Why namespaces: every host needs its own address and port space (an app on port P on host 1 must not collide with
one on host 2, the router must reach them over a real network path) without containers or VMs. The namespaces
share the filesystem and the pid space, so the apps the platform starts over SSH run this checkout's Python, and
cleanup can find every process a host ran (``ip netns pids``) and kill it, whatever happened in the test.

Each host: namespace ``rg<tag><n>``, root side 10.231.<net>.1/24, host side 10.231.<net>.2/24, an sshd on the
host address (port 22, or 2222 for ``alt_port``) with its own host key, accepting one test key for the current
user. ``known_hosts`` lists every host's key; ``kill_sshd`` ends a host's sshd (listener and sessions) but not the
apps it started, as losing SSH to a machine does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.wait import wait_until

SSHD = "/usr/sbin/sshd"


@dataclass
class Host:
    n: int
    netns: str
    address: str
    port: int
    directory: Path
    sshd_pid: int = 0

    @property
    def entry(self) -> str:
        """How a spec names it in ``hosts``."""
        return self.address if self.port == 22 else f"{self.address}:{self.port}"


@dataclass
class Fleet:
    root: Path
    key: Path
    known_hosts: Path
    hosts: list[Host] = field(default_factory=list)
    user: str = ""

    def entries(self) -> list[str]:
        return [h.entry for h in self.hosts]

    def spec_lines(self, command: str, *, indent: str = "  ", hosts: list[str] | None = None) -> str:
        """The platform block's keys for these hosts, or for ``hosts`` (without ``kind``)."""
        hosts_text = ", ".join(f'"{e}"' for e in (self.entries() if hosts is None else hosts))
        return (f"{indent}hosts: [{hosts_text}]\n{indent}identity: {self.key}\n"
                f"{indent}known_hosts: {self.known_hosts}\n{indent}connect_timeout: 3s\n"
                f"{indent}remote_dir: {self.root / 'remote'}\n"
                f"{indent}command: \"{command}\"\n")

    def start_sshd(self, host: Host) -> None:
        # nsenter, not `ip netns exec`: only the network is the host's own; the mounts stay this machine's, so a
        # container engine run over SSH finds /sys/fs/cgroup (ip netns exec remounts /sys without it).
        _run("nsenter", f"--net=/run/netns/{host.netns}", SSHD, "-f", str(host.directory / "sshd_config"),
             "-E", str(host.directory / "sshd.log"))
        pid_file = host.directory / "sshd.pid"
        wait_until(lambda: _listening(host), 10, f"sshd of host {host.entry} to listen")
        said = pid_file.read_text().strip() if pid_file.exists() else ""
        host.sshd_pid = int(said) if said.isdigit() else 0  # sshd may write it just after it listens

    def kill_sshd(self, host: Host) -> None:
        """The listener and every session process of this host's sshd; the apps it started keep running."""
        for pid in _netns_pids(host.netns):
            if _comm(pid).startswith("sshd"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def freeze_sshd(self, host: Host, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the host's sshd and its sessions: connections open but nothing answers, as behind
        a firewall that drops packets; the apps keep serving."""
        for pid in _netns_pids(host.netns):
            if _comm(pid).startswith("sshd"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def sshd_running(self, host: Host) -> bool:
        return _listening(host)

    def app_pids(self, host: Host) -> list[int]:
        """Processes the platform started on the host (they carry its marker; its own shells do not)."""
        return [p for p in _netns_pids(host.netns) if b"RELEASEGATE_INSTANCE=" in _environ(p)]

    def close(self) -> None:
        for host in self.hosts:
            for pid in _netns_pids(host.netns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            netns = host.netns
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not _netns_pids(netns), 5, f"processes of {netns} to end")  # noqa: B023
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _netns_pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _listening(host: Host) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host.address, host.port)) == 0


def netns_allowed() -> str | None:
    """Why hosts cannot be built here (None: they can)."""
    if shutil.which("ip") is None or not Path(SSHD).exists() or shutil.which("ssh-keygen") is None:
        return "needs iproute2 and openssh-server (scripts/test installs them)"
    probe = f"rgprobe{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"`ip netns add` is not permitted here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _free_nets(count: int) -> list[int]:
    used = _run("ip", "-o", "-4", "addr")
    nets = [n for n in range(1, 250) if f"10.231.{n}." not in used]
    start = secrets.randbelow(max(1, len(nets) - count))
    return nets[start:start + count]


def build(root: Path, count: int, *, alt_port: int | None = None) -> Fleet:
    """``count`` hosts under ``root``; host ``alt_port`` (an index) listens on 2222 instead of 22."""
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    root.mkdir(parents=True, exist_ok=True)
    key = root / "client_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    fleet = Fleet(root, key, root / "known_hosts", user=_user())
    tag = secrets.token_hex(2)
    try:
        for i, net in enumerate(_free_nets(count)):
            host = _host(fleet, i + 1, net, tag, 2222 if alt_port == i else 22)
            fleet.hosts.append(host)
            fleet.start_sshd(host)
        lines = []
        for host in fleet.hosts:
            public = (host.directory / "host_ed25519.pub").read_text().split()
            name = host.address if host.port == 22 else f"[{host.address}]:{host.port}"
            lines.append(f"{name} {public[0]} {public[1]}\n")
        fleet.known_hosts.write_text("".join(lines))
    except BaseException:
        fleet.close()
        raise
    return fleet


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _host(fleet: Fleet, n: int, net: int, tag: str, port: int) -> Host:
    netns = f"rg{tag}{n}"
    outside, inside = f"rg{tag}{n}a", f"rg{tag}{n}b"
    host = Host(n, netns, f"10.231.{net}.2", port, fleet.root / f"host{n}")
    host.directory.mkdir()
    _run("ip", "netns", "add", netns)
    _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
    _run("ip", "link", "set", inside, "netns", netns)
    _run("ip", "addr", "add", f"10.231.{net}.1/24", "dev", outside)
    _run("ip", "link", "set", outside, "up")
    _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{host.address}/24", "dev", inside)
    _run("ip", "netns", "exec", netns, "ip", "link", "set", inside, "up")
    _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.directory / "host_ed25519"))
    authorized = host.directory / "authorized_keys"
    shutil.copy(fleet.key.with_suffix(".pub"), authorized)
    (host.directory / "sshd_config").write_text(f"""\
ListenAddress {host.address}:{port}
HostKey {host.directory / 'host_ed25519'}
PidFile {host.directory / 'sshd.pid'}
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
LogLevel VERBOSE
""")
    return host


@contextlib.contextmanager
def fleet_of(root: Path, count: int, *, alt_port: int | None = None) -> Iterator[Fleet]:
    why = netns_allowed()
    if why is not None:
        pytest.skip(f"SSH hosts in network namespaces: {why}")
    fleet = build(root, count, alt_port=alt_port)
    try:
        yield fleet
    finally:
        fleet.close()
