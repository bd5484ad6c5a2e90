"""A private Prometheus for tests: its own config and storage under tmp_path, on a free loopback port.

Scrapes every second so a test sees fresh samples quickly; started and stopped by the test (SIGTERM, then
SIGKILL), never left behind. Tests that need it skip when /usr/bin/prometheus is not installed.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.wait import terminate

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
START_DEADLINE = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return Path(PROMETHEUS).exists() and Path(PROMTOOL).exists()


@dataclass
class PrometheusProc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def query(self, promql: str) -> Any:
        return httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5, trust_env=False).json()

    def stop(self) -> None:
        terminate(self.proc)


def start_prometheus(tmp: Path, targets: list[str]) -> PrometheusProc:
    """Start Prometheus scraping ``targets`` (``host:port``, path /metrics) every second; wait until ready."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: releasegate\n    static_configs:\n"
        f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
    port = free_port()
    log = tmp / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    prom = PrometheusProc(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + START_DEADLINE
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{prom.url}/-/ready", timeout=1, trust_env=False).status_code == 200:
                return prom
        if time.monotonic() > deadline:
            prom.stop()
            raise AssertionError(f"prometheus not ready within {START_DEADLINE}s: {log.read_text()[-2000:]}")
        time.sleep(0.05)
