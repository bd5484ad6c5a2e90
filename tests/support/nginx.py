"""A private nginx for the nginx router tests: its own prefix, main config, pid file and error log under a
temporary directory, in the foreground (``daemon off``) so the test owns the master process and stops it.

The main config includes ``<conf_dir>/releasegate-*.conf``: a glob, so nginx starts before releasegate has
written any file, and releasegate's temporary files (``.rg-new``, ``.rg-tmp``) never match it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.router_helpers import free_port
from tests.support.wait import terminate, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@dataclass
class PrivateNginx:
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    listen_port: int = field(default_factory=free_port)
    _log: Any = None

    @property
    def main_config(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf.d"

    @property
    def error_log(self) -> Path:
        return self.root / "logs" / "error.log"

    def router_yaml(self, extra: str = "") -> str:
        """The spec's ``router:`` mapping that makes releasegate drive this nginx; ``extra`` adds keys
        (``", drain_timeout: 5s"``)."""
        return (f'{{kind: nginx, nginx: "{NGINX}", listen: "127.0.0.1:{self.listen_port}", '
                f'config_file: "{self.conf_dir / "releasegate-{service}.conf"}", prefix: "{self.root}", '
                f'main_config: "{self.main_config}", pid_file: "{self.root / "nginx.pid"}"{extra}}}')

    def write_main_config(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read/write the 0700 temp directory
        self.main_config.write_text(
            f"{user}worker_processes 2;\ndaemon off;\npid {self.root}/nginx.pid;\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 512; }\n"
            "http {\n    access_log off;\n"
            f"    include {self.conf_dir}/releasegate-*.conf;\n}}\n", encoding="utf-8")

    def start(self) -> None:
        self.write_main_config()
        self._log = open(self.root / "logs" / "stderr.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([NGINX, "-p", str(self.root), "-c", str(self.main_config)],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        wait_until(lambda: (self.root / "nginx.pid").exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                   what="nginx to write its pid file")
        assert self.proc.poll() is None, (self.root / "logs" / "stderr.log").read_text()

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        self.proc = None


@dataclass
class DemoBackend:
    version: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    faults: str = ""  # releasegate.demoapp's FAULTS, e.g. "2.0.0:error_rate=1"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "RELEASEGATE_VERSION": self.version, "FAULTS": self.faults}
        self.proc = subprocess.Popen([sys.executable, "-m", "releasegate.demoapp", "--port", str(self.port)],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_until(lambda: get(self.port, "/health")[0] == 200, what=f"demo backend {self.version}")

    def stop(self) -> None:
        terminate(self.proc)
        self.proc = None


def get(port: int, path: str = "/", cookie: str | None = None) -> tuple[int, dict[str, str]]:
    """One request on a fresh connection: (status, lower-cased headers); status 0 when it could not connect."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Connection": "close"}
    if cookie is not None:
        headers["Cookie"] = cookie
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    except OSError:
        return 0, {}
    finally:
        conn.close()
