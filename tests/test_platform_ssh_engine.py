"""The engine's two rules for SSH fleets, purely (no hosts): rolling counts hosts, and an unreachable host is
waited for, never taken for a failure (docs/ssh.md)."""

from __future__ import annotations

from typing import Any

import pytest

from releasegate.engine import decide, rolling
from releasegate.engine.simulate import simulate
from releasegate.engine.state import Health, Outcome, Route, Start, Stop
from releasegate.spec.models import Spec
from tests.support.simulated import make_spec

UNREACHABLE = Outcome(False, "host app2:2222 unreachable: connection refused", {"unreachable": ["app2:2222"]})


def fleet(per_host: int = 1, parallel: int = 1, hosts: int = 3, **rolling_keys: Any) -> Spec:
    return make_spec(platform={"kind": "ssh", "hosts": [f"app{i}" for i in range(1, hosts + 1)],
                               "command": "shop --port {port}", "instances_per_host": per_host,
                               "max_parallel_hosts": parallel},
                     strategy={"rolling": rolling_keys})


@pytest.mark.parametrize(("per_host", "parallel", "surge", "unavailable"),
                         [(1, 1, 1, 0), (2, 1, 1, 1), (2, 2, 2, 0), (3, 1, 0, 1)])
def test_rolling_on_a_fleet_moves_whole_hosts_within_the_host_limits(per_host, parallel, surge, unavailable):
    spec = fleet(per_host, parallel, max_surge=surge, max_unavailable=unavailable)
    n = 3 * per_host
    assert rolling.limits(spec) == (surge * per_host, unavailable * per_host, parallel * per_host)
    trace = simulate(spec, "2.0.0", "1.0.0")
    assert trace.state.status == "promoted"
    running = {"1.0.0": n, "2.0.0": 0}
    for _, action in trace.steps:
        if isinstance(action, Start) and action.version == "2.0.0":
            batch = action.count - running["2.0.0"]
            assert batch % per_host == 0 and 0 <= batch <= parallel * per_host  # whole hosts, never too many
            running["2.0.0"] = action.count
        elif isinstance(action, Stop):
            running[action.version] = min(running[action.version], action.keep)
        elif isinstance(action, Route):
            assert sum(s.instances or 0 for s in action.shares) >= n - unavailable * per_host
        assert sum(running.values()) <= n + surge * per_host
    assert trace.running == {"1.0.0": 0, "2.0.0": n}


def test_local_rolling_limits_are_unchanged():
    spec = make_spec(platform={"command": "app {port}", "instances": 4},
                     strategy={"rolling": {"max_surge": 2, "max_unavailable": 1}})
    assert rolling.limits(spec) == (2, 1, 4)


@pytest.mark.parametrize("phase", ["prepare", "start", "health", "smoke"])
def test_an_unreachable_host_before_traffic_is_retried_not_aborted(phase):
    spec = fleet()
    st = decide.new_rollout("r1", spec, "2.0.0", "1.0.0", 0.0).model_copy(update={"phase": phase})
    action = decide.next_action(st, spec, 1.0)
    after, [said] = decide.apply(st, spec, action, UNREACHABLE, 1.0)
    assert after.phase == phase and after.status == "running" and after.restarts == 0
    assert said.kind == "retry" and "app2:2222 unreachable" in (after.waiting or "")


@pytest.mark.parametrize("phase", ["roll", "roll_back"])
def test_an_unreachable_host_in_a_rolling_batch_is_retried_not_rolled_back(phase):
    spec = fleet()
    st = decide.new_rollout("r1", spec, "2.0.0", "1.0.0", 0.0)
    st = rolling.begin(st, spec, 0.0).model_copy(update={"phase": phase})
    action = decide.next_action(st, spec, 1.0)
    assert isinstance(action, Start)
    after, [said] = decide.apply(st, spec, action, UNREACHABLE, 1.0)
    assert after.phase == phase and after.rolling == st.rolling and said.kind == "retry"


def canary_fleet(hosts: int, per_host: int = 1, steps: str = "20,50") -> Spec:
    return make_spec(platform={"kind": "ssh", "hosts": [f"app{i}" for i in range(1, hosts + 1)],
                               "command": "shop --port {port}", "instances_per_host": per_host},
                     strategy={"canary": {"steps": [{"weight": int(w), "pause": "1m"} for w in steps.split(",")]}})


@pytest.mark.parametrize(("hosts", "per_host", "starts"), [(5, 1, [1, 3, 5]), (3, 2, [2, 4, 6]), (2, 1, [1, 1, 2])])
def test_a_canary_on_a_fleet_starts_hosts_as_its_steps_need_them_and_checks_them_before_traffic(hosts, per_host,
                                                                                               starts):
    spec = canary_fleet(hosts, per_host)
    trace = simulate(spec, "2.0.0", "1.0.0")
    assert trace.state.status == "promoted"
    started = checked = 0
    routed: list[tuple[int, int | None]] = []
    for _, action in trace.steps:
        if isinstance(action, Start) and action.version == "2.0.0":
            started = max(started, action.count)
        elif isinstance(action, Health) and action.version == "2.0.0":
            checked = max(checked, action.count or 0)
        elif isinstance(action, Route) and (share := next((s for s in action.shares if s.version == "2.0.0"), None)):
            routed.append((share.weight, share.instances))
            assert (share.instances or hosts * per_host) <= min(started, checked)  # never ahead of its checks
    assert routed == [(20, starts[0]), (50, starts[1]), (100, None)]
    assert sorted({a.count for _, a in trace.steps if isinstance(a, Start) and a.version == "2.0.0"}) == \
        sorted(set(starts))


def test_blue_green_and_local_canaries_still_start_everything_first():
    for spec in (fleet().model_copy(update={"strategy": make_spec(strategy={"bluegreen": {}}).strategy}),
                 make_spec(platform={"command": "app {port}", "instances": 4},
                           strategy={"canary": {"steps": [{"weight": 20, "pause": "1m"}]}})):
        trace = simulate(spec, "2.0.0", "1.0.0")
        assert {a.count for _, a in trace.steps if isinstance(a, Start) and a.version == "2.0.0"} == \
            {spec.platform.instances}


def test_new_hosts_that_fail_their_health_check_roll_the_canary_back():
    spec = canary_fleet(4)
    st = decide.new_rollout("r1", spec, "2.0.0", "1.0.0", 0.0).model_copy(
        update={"phase": "step", "step": 1, "weight": 20, "grown": 1, "growing": True})
    action = decide.next_action(st, spec, 1.0)
    assert action == Health("2.0.0", 2)
    after, [said] = decide.apply(st, spec, action, Outcome(False, "GET /health: 500"), 1.0)
    assert said.kind == "rollback" and "on the hosts added" in said.message and after.phase == "rollback"
