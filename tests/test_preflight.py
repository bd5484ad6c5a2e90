"""Preflight: each check passes or fails with a reason, and a failing one stops deploy before anything starts."""

from __future__ import annotations

import os
import socket

import pytest

from releasegate import service
from releasegate.errors import UserError
from releasegate.preflight import preflight
from releasegate.providers.routers.builtin import read_router_state
from releasegate.spec import load_spec
from tests.support.rollouts import free_port, write_spec


async def test_a_machine_ready_for_the_deploy_passes_every_check(tmp_path):
    spec_path = write_spec(tmp_path, free_port(), "{bluegreen: {}}")
    checks = await preflight(load_spec(spec_path), spec_path, "1.0.0", tmp_path / "state")
    assert [c.name for c in checks] == ["disk", "state dir", "port", "command", "running version"]
    assert all(c.ok for c in checks), checks


async def test_a_taken_port_and_a_missing_program_fail_and_deploy_starts_nothing(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        spec_path = write_spec(tmp_path, port, "{bluegreen: {}}")
        spec_path.write_text(spec_path.read_text().replace("-m releasegate.demoapp", "-m releasegate.demoapp")
                             .replace('command: "', 'command: "no-such-program-xyz '))
        checks = {c.name: c for c in await preflight(load_spec(spec_path), spec_path, "1.0.0", tmp_path / "s")}
        assert not checks["port"].ok and "taken by another program" in checks["port"].detail
        assert not checks["command"].ok and "no-such-program-xyz" in checks["command"].detail
        with pytest.raises(UserError, match="preflight failed, nothing was started"):
            await service.deploy(service.new_context(tmp_path / "s"), spec_path, "1.0.0")
        assert read_router_state(tmp_path / "s", "shop") is None


async def test_migrations_are_checked_before_anything_starts(tmp_path):
    """Database usable, backup dir writable, pending files lint clean: a breaking one fails preflight (and so the
    deploy, before any process starts) unless the deploy allows it; already applied files are not judged again."""
    import sqlite3

    spec_path = write_spec(tmp_path, free_port(), "{bluegreen: {}}")
    spec_path.write_text(spec_path.read_text() + "migrations: {database: sqlite:///app.db, backup_dir: bk}\n")
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_add.sql").write_text("ALTER TABLE users ADD COLUMN email TEXT;\n")
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, phone TEXT)")
    spec = load_spec(spec_path)

    checks = {c.name: c for c in await preflight(spec, spec_path, "1.0.0", tmp_path / "state")}
    assert checks["database"].ok and checks["backup dir"].ok
    assert checks["migrations"].ok and "1 pending (001_add.sql), backward compatible" in checks["migrations"].detail

    (tmp_path / "migrations" / "002_drop.sql").write_text("ALTER TABLE users DROP COLUMN phone;\n")
    checks = {c.name: c for c in await preflight(spec, spec_path, "1.0.0", tmp_path / "state")}
    assert not checks["migrations"].ok and "002_drop.sql:1: drops column users.phone" in checks["migrations"].detail
    allowed = {c.name: c for c in await preflight(spec, spec_path, "1.0.0", tmp_path / "state", allow_breaking=True)}
    assert allowed["migrations"].ok and "checked at admission" in allowed["migrations"].detail
    with pytest.raises(UserError, match="preflight failed, nothing was started"):
        await service.deploy(service.new_context(tmp_path / "state"), spec_path, "1.0.0")
    assert read_router_state(tmp_path / "state", "shop") is None

    (tmp_path / "locked").mkdir(mode=0o500)
    spec_path.write_text(spec_path.read_text().replace("backup_dir: bk", "backup_dir: locked/bk"))
    checks = {c.name: c for c in await preflight(load_spec(spec_path), spec_path, "1.0.0", tmp_path / "state")}
    if os.geteuid() != 0:  # root writes anywhere: the permission case is only observable as another user
        assert not checks["backup dir"].ok and "not a writable directory" in checks["backup dir"].detail
    (tmp_path / "file").write_text("")
    spec_path.write_text(spec_path.read_text().replace("backup_dir: locked/bk", "backup_dir: file/bk"))
    checks = {c.name: c for c in await preflight(load_spec(spec_path), spec_path, "1.0.0", tmp_path / "state")}
    assert not checks["backup dir"].ok and "file is not a writable directory" in checks["backup dir"].detail


def _time_wait_port() -> int:
    """A port where nothing listens any more but a connection lingers in TIME-WAIT, as on a router's port for a
    minute after it stopped with clients connected (the side that closes first keeps TIME-WAIT)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = listener.accept()
            conn.close()  # the server side closes first...
            assert client.recv(1) == b""  # ...the client sees the end and closes too
    return port


async def test_connections_in_time_wait_on_the_router_port_do_not_make_it_taken(tmp_path):
    port = _time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))  # what the check did: binding without SO_REUSEADDR fails for a minute
    spec_path = write_spec(tmp_path, port, "{bluegreen: {}}")
    checks = {c.name: c for c in await preflight(load_spec(spec_path), spec_path, "1.0.0", tmp_path / "state")}
    assert checks["port"].ok and checks["port"].detail == f"127.0.0.1:{port} is free for the router"
