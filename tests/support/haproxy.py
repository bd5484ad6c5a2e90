"""A private HAProxy for the tests: config, stats socket and pid file under tmp_path, loopback ports only.

Started daemonised (``-D -p pidfile``), reloaded with ``-sf <old pid>``, stopped by the pid it wrote: only the
processes this helper started are ever signalled. Everything waits by polling with a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .wait import terminate, wait_until

HAPROXY = "/usr/sbin/haproxy"
DEADLINE = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def runtime(sock: Path, cmd: str) -> str:
    """One synchronous runtime API command (for the helper's own readiness checks)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2.0)
        s.connect(str(sock))
        s.sendall(cmd.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@dataclass
class Haproxy:
    """One haproxy process tree built from ``config`` (already rendered)."""

    config: Path
    sock: Path
    pidfile: Path
    pids: list[int] = field(default_factory=list)

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pidfile.read_text().split()[0])
        return None

    def _answers_as(self, pid: int) -> bool:
        try:
            info = runtime(self.sock, "show info")
        except OSError:
            return False
        return f"Pid: {pid}\n" in info

    def start(self, reload_from: int | None = None) -> Haproxy:
        cmd = [HAPROXY, "-D", "-f", str(self.config), "-p", str(self.pidfile)]
        if reload_from is not None:
            cmd += ["-sf", str(reload_from)]
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=DEADLINE)
        if out.returncode != 0:
            raise AssertionError(f"haproxy failed to start ({out.returncode}): {out.stderr.strip()}")
        pid = wait_until(self._pid, what="haproxy's pid file")
        self.pids.append(pid)
        wait_until(lambda: self._answers_as(pid), what=f"haproxy {pid} on {self.sock}")
        return self

    @property
    def pid(self) -> int:
        return self.pids[-1]

    def reload(self) -> int:
        """A new process from the same config file; the old one finishes its connections and exits."""
        old = self.pid
        self.start(reload_from=old)
        wait_until(lambda: not _alive(old), what=f"old haproxy {old} to exit")
        return self.pid

    def stop(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in self.pids:
            with contextlib.suppress(AssertionError):
                wait_until(functools.partial(_gone, pid), timeout=5.0, what=f"haproxy {pid} to exit")


def _gone(pid: int) -> bool:
    return not _alive(pid)


@dataclass
class DemoApp:
    """``python3 -m releasegate.demoapp`` on a free port, with X-Version in every answer."""

    version: str
    port: int = field(default_factory=free_port)
    faults: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def backend(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DemoApp:
        env = {**os.environ, "RELEASEGATE_VERSION": self.version, "FAULTS": self.faults}
        self.proc = subprocess.Popen([sys.executable, "-m", "releasegate.demoapp", "--port", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(up, what=f"demo app {self.version} on {self.port}")
        return self

    def stop(self) -> None:
        terminate(self.proc, 5.0)
