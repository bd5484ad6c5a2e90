"""``releasegate router status`` and ``router stop`` for services routed by nginx or HAProxy: status shows the kind,
where it listens and the routes read back from the running server (or why they cannot be read); stop says it
manages only the built-in router, exit 2. A real nginx and a real HAProxy on loopback, real app processes, the CLI
as a separate process."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate import service
from releasegate.providers.routers.haproxy import HaproxyRouter
from releasegate.spec import load_spec
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec
from tests.support.haproxy import HAPROXY, Haproxy
from tests.support.nginx import NGINX, PrivateNginx
from tests.support.rollouts import cleanup, free_port, write_spec

pytestmark = pytest.mark.slow


def rg(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "400"})


def with_router(tmp_path: Path, port: int, router_yaml: str) -> Path:
    path = write_spec(tmp_path, port, "{bluegreen: {}}", post_promotion="0s", rules="[]")
    builtin = f'router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}'
    path.write_text(path.read_text().replace(builtin, f"router: {router_yaml}"))
    return path


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[PrivateNginx]:
    proxy = PrivateNginx(tmp_path / "nginx")
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.skipif(shutil.which(NGINX) is None, reason="nginx is not installed")
async def test_router_status_reads_nginx_back_and_router_stop_leaves_it_to_its_supervisor(nginx, tmp_path):
    path = with_router(tmp_path, nginx.listen_port, nginx.router_yaml())
    state = tmp_path / "state"
    try:
        st = await asyncio.wait_for(service.deploy(service.new_context(state), path, "1.0.0"), 60)
        assert st.status == "promoted", st.reason
        file = nginx.conf_dir / "releasegate-shop.conf"
        expected = (f"shop: nginx (listening on 127.0.0.1:{nginx.listen_port}, routes file {file}; run by its own "
                    "supervisor): 1.0.0 100% (2 backends)")
        for args in (("router", "status"), ("router", "status", "shop")):
            r = await asyncio.to_thread(rg, state, *args)
            assert r.returncode == 0 and r.stdout.strip() == expected, (r.stdout, r.stderr)

        stop = await asyncio.to_thread(rg, state, "router", "stop", "shop")
        assert stop.returncode == 2 and len(stop.stderr.splitlines()) == 1, stop.stderr
        assert "`releasegate router stop` manages only the built-in router: nginx is stopped by its own " \
               "supervisor" in stop.stderr
        assert (await asyncio.to_thread(rg, state, "router", "status", "shop")).stdout.strip() == expected

        nginx.stop()  # the operator's supervisor stops it: status says why it cannot read the routes
        down = await asyncio.to_thread(rg, state, "router", "status", "shop")
        assert down.returncode == 0
        assert down.stdout.startswith("shop: nginx (listening on") and "cannot read its routes: " in down.stdout
    finally:
        await cleanup(state, path)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A unix socket path must stay under 108 bytes; pytest's tmp_path may not."""
    path = Path(tempfile.mkdtemp(prefix="rg-rs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(shutil.which(HAPROXY) is None, reason="haproxy is not installed")
async def test_router_status_reads_haproxy_back_and_router_stop_leaves_it_to_its_supervisor(tmp_path, short_dir):
    port = free_port()
    sock = short_dir / "admin.sock"
    config = tmp_path / "h.cfg"
    path = with_router(tmp_path, port, f'{{kind: haproxy, listen: "127.0.0.1:{port}", config_file: "{config}", '
                                       f'stats_socket: "{sock}", slots: 4}}')
    spec = load_spec(path)
    assert isinstance(spec.router, HaproxyRouterSpec)
    assert HaproxyRouter(spec.router, "shop").ensure_config()
    proxy = Haproxy(config, sock, tmp_path / "haproxy.pid").start()
    state = tmp_path / "state"
    try:
        st = await asyncio.wait_for(service.deploy(service.new_context(state), path, "1.0.0"), 60)
        assert st.status == "promoted", st.reason
        r = await asyncio.to_thread(rg, state, "router", "status")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == (f"shop: haproxy (listening on 127.0.0.1:{port}, stats socket {sock}, "
                                    f"configuration {config}; run by its own supervisor): 1.0.0 100% (2 backends)")
        stop = await asyncio.to_thread(rg, state, "router", "stop", "shop")
        assert stop.returncode == 2 and "haproxy is stopped by its own supervisor" in stop.stderr, stop.stderr

        proxy.stop()
        down = await asyncio.to_thread(rg, state, "router", "status", "shop")
        assert "cannot read its routes: HAProxy does not answer on" in down.stdout, down.stdout
    finally:
        proxy.stop()
        await cleanup(state, path)


def test_router_status_and_stop_name_the_state_dir_they_read(tmp_path):
    """Where releasegate never ran: the state dir read, and how to point at another."""
    for args in (("router", "status", "shop"), ("router", "stop", "shop")):
        r = rg(tmp_path / "nowhere", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert f"there is no releasegate state in {tmp_path / 'nowhere'}" in r.stderr
        assert "to read another state dir: --state-dir DIR or RELEASEGATE_HOME=DIR" in r.stderr
    everything = rg(tmp_path / "nowhere", "router", "status")
    assert everything.returncode == 0 and "--state-dir DIR" in everything.stdout
    assert not (tmp_path / "nowhere").exists()
