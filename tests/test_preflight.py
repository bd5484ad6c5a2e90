"""Preflight: each check passes or fails with a reason, and a failing one stops deploy before anything starts."""

from __future__ import annotations

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
