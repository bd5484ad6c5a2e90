"""A closed stdout (``deploy ... | head -2``) or a closed terminal never stops a rollout: the controller drives it to
its end without printing and exits with the rollout's code; read-only commands piped into ``head`` exit 0 quietly.
Real releasegate processes, real app processes and the real router, real pipes and a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import subprocess
import sys

import pytest

from releasegate import service
from tests.support.rollouts import Load, RolloutEnv
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

CANARY = "{canary: {steps: [{weight: 30, pause: 2s}]}}"


@pytest.fixture
def env(tmp_path):
    made = RolloutEnv(tmp_path)
    yield made
    made.close()


def _command(env: RolloutEnv, *args: str) -> list[str]:
    return [sys.executable, "-m", "releasegate", "--state-dir", str(env.state), *args]


def _closed_pipe() -> int:
    """The write end of a pipe whose reader has already gone: every write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


def _ended(env: RolloutEnv) -> bool:
    return service.status(env.ctx, "shop")[0]["rollout"] is None


async def _run_with_stdout(env: RolloutEnv, stdout: int, *args: str) -> subprocess.CompletedProcess[str]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(_command(env, *args), stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "COLUMNS": "120"})
    try:
        return await asyncio.to_thread(run)
    finally:
        os.close(stdout)


async def test_a_deploy_whose_stdout_closes_drives_the_rollout_to_its_end(env):
    spec = env.spec(CANARY)
    assert (await service.deploy(env.ctx, spec, "1.0.0")).status == "promoted"
    async with Load(env.url) as load:
        await load.wait_for(20)
        done = await _run_with_stdout(env, _closed_pipe(), "deploy", str(spec), "--version", "2.0.0")
    assert done.returncode == 0, done.stderr  # the rollout's own code: promoted
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    [note] = done.stderr.splitlines()  # said once, where the user still sees it
    assert note.startswith("releasegate: stdout is gone (Broken pipe); the rollout goes on to its end")
    [item] = service.status(env.ctx, "shop")
    assert item["rollout"] is None and item["current"] == "2.0.0"
    last = service.history(env.ctx, "shop", 1)[0]
    assert last["status"] == "promoted"
    assert {"step", "analysis_passed", "switched", "promoted"} <= {e["kind"] for e in last["events"]}
    assert await env.routes() == {"2.0.0": 100}


async def test_read_only_commands_piped_into_a_reader_that_stops_exit_quietly(env):
    spec = env.spec("{bluegreen: {}}", post_promotion="0s", rules="[]")
    assert (await service.deploy(env.ctx, spec, "1.0.0")).status == "promoted"
    for args in (("history", "shop"), ("history", "shop", "--json"), ("status",), ("status", "--json"),
                 ("plan", str(spec), "--version", "2.0.0"), ("audit", "export")):
        done = await _run_with_stdout(env, _closed_pipe(), *args)
        assert (done.returncode, done.stderr) == (0, ""), args


async def test_a_deploy_outlives_its_terminal_closing(env):
    """The terminal closes (its pty master goes away, SIGHUP arrives) during the canary: the controller keeps
    driving the rollout and ends with its code; nothing is left at 30 % with nobody analysing it."""
    spec = env.spec("{canary: {steps: [{weight: 30, pause: 3s}]}}")
    assert (await service.deploy(env.ctx, spec, "1.0.0")).status == "promoted"
    master, slave = pty.openpty()
    async with Load(env.url) as load:
        await load.wait_for(20)
        proc = subprocess.Popen(_command(env, "deploy", str(spec), "--version", "2.0.0"), stdin=slave, stdout=slave,
                                stderr=slave, env={**os.environ, "COLUMNS": "120"})
        os.close(slave)
        try:
            seen = b""
            while b"30%" not in seen:  # the canary step is on: what the user was watching
                seen += await asyncio.to_thread(os.read, master, 4096)
            os.close(master)  # the terminal window closes...
            master = -1
            proc.send_signal(signal.SIGHUP)  # ...and its session is told so
            code = await asyncio.to_thread(proc.wait, 120)
        finally:
            if master >= 0:
                os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0
    await eventually(lambda: _ended(env), what="the rollout to end")
    assert service.history(env.ctx, "shop", 1)[0]["status"] == "promoted"
    assert await env.routes() == {"2.0.0": 100}

