"""A private Podman engine for the container platform tests: its own containers.conf, storage root, run root and
temporary directory under a test's temporary directory, served by ``podman system service --time=0`` on a Unix
socket there, so releasegate talks to it through the Docker Engine API exactly as it would to Docker.

This machine's sandbox refuses Podman's defaults (crun, the systemd cgroup manager and the default ulimits), so the
containers.conf sets ``runtime = "runc"``, ``cgroup_manager = "cgroupfs"`` and ``default_ulimits = []``. The
storage driver is ``vfs`` (no kernel overlay needed; the images are a few kilobytes), and the locks are files in
the private directory, so two engines (two xdist workers) never share Podman's state.

There is no registry to pull from: ``base_image`` imports an empty root file system, and the specs bind-mount the
host's /usr, /lib, /lib64, /bin and /etc read-only (``HOST_VOLUMES``) so the host's python3 runs inside. The test
helpers use the podman CLI to build images and clean up; releasegate itself never does (it uses the SDK).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.support.wait import wait_until

PODMAN = shutil.which("podman")
PYTHON = "/usr/bin/python3"
"""The host's system python (the one under /usr), which runs inside the containers through the bind mounts."""
HOST_VOLUMES = [f"{p}:{p}:ro" for p in ("/usr", "/lib", "/lib64", "/bin", "/etc") if Path(p).exists()]
DEMOAPP = Path(__file__).resolve().parents[2] / "releasegate" / "demoapp.py"


@dataclass
class PrivatePodman:
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    images: list[str] = field(default_factory=list)
    insecure_registries: list[str] = field(default_factory=list)  # HOST:PORT reached over plain HTTP

    @property
    def socket(self) -> Path:
        return self.root / "podman.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf")}

    def write_config(self) -> None:
        for sub in ("storage", "run", "tmp", "volumes"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "containers.conf").write_text(
            "[containers]\ndefault_ulimits = []\n\n"
            f'[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'tmp_dir = "{self.root / "tmp"}"\nvolume_path = "{self.root / "volumes"}"\n'
            f'lock_type = "file"\n')
        (self.root / "registries.conf").write_text("".join(
            f'[[registry]]\nlocation = "{r}"\ninsecure = true\n\n' for r in self.insecure_registries))
        (self.root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.root / "storage"}"\nrunroot = "{self.root / "run"}"\n')

    def start(self) -> None:
        assert PODMAN is not None
        self.write_config()
        log = open(self.root / "service.log", "ab")  # noqa: SIM115 - kept open for the service's lifetime
        self.proc = subprocess.Popen([PODMAN, "system", "service", "--time=0", self.url], env=self.env, cwd=self.root,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: self.socket.exists() or self.proc is None or self.proc.poll() is not None,
                   timeout=30, what="podman system service to create its socket")
        if self.proc.poll() is not None:
            raise RuntimeError(f"podman system service exited: {(self.root / 'service.log').read_text()[-2000:]}")

    def podman(self, *args: str, check: bool = True) -> str:
        assert PODMAN is not None
        done = subprocess.run([PODMAN, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def base_image(self, tag: str, *changes: str) -> str:
        """An image with an empty root file system (the mount points for HOST_VOLUMES and /app), tagged ``tag``;
        ``changes`` are Dockerfile instructions podman import accepts (CMD, ENV, ...)."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            for name in ("usr", "lib", "lib64", "bin", "etc", "tmp", "app", "proc", "sys", "dev", "data"):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
                tar.addfile(info)
        archive = self.root / f"rootfs-{len(self.images)}.tar"
        archive.write_bytes(data.getvalue())
        flags = [arg for change in changes for arg in ("--change", change)]
        self.podman("import", *flags, str(archive), tag)
        self.images.append(tag)
        return tag

    def healthcheck_image(self, tag: str, base: str, test: str, interval: str = "1s") -> str:
        """``base`` plus a HEALTHCHECK running ``test`` in the container (Docker format, which keeps it)."""
        context = self.root / f"build-{len(self.images)}"
        context.mkdir()
        (context / "Containerfile").write_text(
            f"FROM {base}\nHEALTHCHECK --interval={interval} --timeout=2s --retries=2 CMD {test}\n")
        self.podman("build", "--format", "docker", "-t", tag, "-f", str(context / "Containerfile"), str(context))
        self.images.append(tag)
        return tag

    def remove_containers(self) -> None:
        self.podman("rm", "--all", "--force", "--time", "0", check=False)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.remove_containers()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self._end_leftovers()

    def _end_leftovers(self) -> None:
        """conmon keeps each finished exec session (``exec_run``, a HEALTHCHECK run) around for its exit delay (5
        minutes) after the container is gone; those of this engine name its private root on their command line."""
        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(self.root) in arg for arg in proc.info["cmdline"] or []):
                    mine.append(proc)
        for proc in mine:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(mine, timeout=5)


@contextlib.contextmanager
def private_podman(root: Path, insecure_registries: list[str] | None = None) -> Iterator[PrivatePodman]:
    """A started engine, stopped (every container removed) at the end; skips the test when podman is missing."""
    if PODMAN is None:
        pytest.skip("podman is not installed (scripts/test installs podman and runc)")
    engine = PrivatePodman(root, insecure_registries=insecure_registries or [])
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
