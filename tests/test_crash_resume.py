"""The crash-resume property: the controller is SIGKILLed at chosen and at random points of canary rollouts under
continuous traffic, `resume` finishes what it left, and every trial ends on the right version with no failed
request (the data plane never depends on the control plane; every step is written before it is acted on).

Twenty trials in one service's life, each a new version deployed by a real `releasegate deploy` process that is
killed once: at a point of the rollout it has reached (its record made, health, each canary step, the
post-promotion watch) plus a little random time, at a random time after it recorded its rollout (possibly after
it finished), or at a random time after its start (possibly before it recorded anything). The kill points are
drawn from a fixed seed, so every run tries the same spread of points; where exactly the kill lands still moves
with the machine's speed, which is the point.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from releasegate import service
from releasegate.errors import UserError
from releasegate.teardown import take_down
from tests.support.rollouts import Load, RolloutEnv, marked_processes
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

TRIALS = 20
STRATEGY = "{canary: {steps: [{weight: 20, pause: 200ms}, {weight: 50, pause: 200ms}], keep_previous: 0s}}"

Rollout = dict[str, Any] | None
# Where a kill lands: a point the rollout has reached (or passed), read from `status` as an operator would.
POINTS: list[tuple[str, Callable[[Rollout], bool]]] = [
    ("recorded", lambda r: r is not None),
    ("health", lambda r: r is not None and r["phase"] not in ("prepare", "start")),
    ("canary at 20%", lambda r: r is not None and r["weight"] >= 20),
    ("canary at 50%", lambda r: r is not None and r["weight"] >= 50),
    ("watch", lambda r: r is not None and r["phase"] in ("watch", "finish")),
]


@pytest.fixture
def env(tmp_path):
    made = RolloutEnv(tmp_path)
    yield made
    made.close()


def rollout_of(env: RolloutEnv, version: str) -> Rollout:
    [status] = service.status(env.ctx, "shop")
    rollout: Rollout = status["rollout"]
    return rollout if rollout is not None and rollout["version"] == version else None


def recorded(env: RolloutEnv, version: str) -> list[dict[str, Any]]:
    return [h for h in service.history(env.ctx, "shop", limit=100) if h["version"] == version]


async def kill_at(env: RolloutEnv, proc: subprocess.Popen[bytes], version: str, rng: random.Random,
                  trial: int) -> str:
    """Kill the deploy process at this trial's point; say where that was meant to be. Even trials: a point of
    the rollout; odd ones: a random time after it recorded its rollout; every fourth: a random time after the
    process started (on a busy machine, before it recorded anything)."""
    if trial % 4 == 3:
        delay = rng.uniform(0.0, 1.0)
        await asyncio.sleep(delay)
        where = f"{delay:.2f}s after the start"
    else:
        name, reached = POINTS[(trial // 2) % len(POINTS)] if trial % 2 == 0 else POINTS[0]
        await eventually(lambda: reached(rollout_of(env, version)) or proc.poll() is not None,
                         what=f"{version} reaching {name}", within=30, every=0.02)
        delay = rng.uniform(0.0, 0.15 if trial % 2 == 0 else 2.5)
        await asyncio.sleep(delay)
        where = f"{delay:.2f}s after {name}"
    if proc.poll() is None:  # else it finished first (a point it passed too fast to be seen)
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return where


async def test_sigkill_at_random_points_of_canaries_under_load_then_resume_ends_on_the_right_version(env):
    spec = env.spec(STRATEGY)
    first = await asyncio.wait_for(service.deploy(env.ctx, spec, "1.0.0"), 60)
    assert first.status == "promoted", first.reason
    rng = random.Random(9)
    current, previous, resumed, outcomes = "1.0.0", "1.0.0", 0, []
    async with Load(env.url) as load:
        await load.wait_for(20)
        for trial in range(TRIALS):
            version = f"1.{trial + 1}.0"
            proc = subprocess.Popen([sys.executable, "-m", "releasegate", "--state-dir", str(env.state), "deploy",
                                     str(spec), "--version", version],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            where = await kill_at(env, proc, version, rng, trial)
            await load.wait_for(10)  # users are served while no controller runs
            try:
                st = await asyncio.wait_for(service.resume(env.ctx, "shop"), 60)
                resumed += 1
                assert st.status == "promoted", f"trial {trial} (killed {where}): {st.reason}"
            except UserError:  # killed before it recorded its rollout, or after it had finished
                pass
            runs = recorded(env, version)
            # The right version: the new one once its rollout was recorded (resume finished it), else the old one.
            expected = version if runs else current
            assert not runs or runs[0]["status"] == "promoted", f"trial {trial} (killed {where}): {runs[0]}"
            assert await env.routes() == {expected: 100}, f"trial {trial} (killed {where})"
            [status] = service.status(env.ctx, "shop")
            assert status["current"] == expected and status["rollout"] is None, f"trial {trial} (killed {where})"
            outcomes.append((where, "resumed" if runs else "not recorded"))
            previous, current = (current, expected) if expected != current else (previous, current)
            await load.wait_for(10)
    assert load.failures == [], (load.failures[:5], outcomes)
    assert set(load.by_version) >= {current}
    # The chosen points land inside a running rollout whatever the machine's speed: some trials really resumed.
    assert resumed >= TRIALS // 4, outcomes
    # Nothing was left behind: instances a killed controller spawned but never recorded were adopted or stopped
    # by the next controller, so only the current version runs (and the one it replaced, until it is retired);
    # `down` stops them, and nothing else remains.
    running = {p.environ()["RELEASEGATE_VERSION"] for p in marked_processes(env.state)}
    assert current in running and running <= {current, previous}, (running, outcomes)
    await take_down(env.ctx, "shop")
    assert marked_processes(env.state) == []
