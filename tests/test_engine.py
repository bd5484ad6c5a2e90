"""The rollout state machine in simulated time: every decision a user would notice, without a process or socket."""

from __future__ import annotations

import pytest

from releasegate.engine import decide, exits
from releasegate.engine.simulate import Trace, simulate
from releasegate.engine.state import Analyze, Observation, Outcome, Route, Start, Stop
from tests.support.simulated import errors_when, make_spec, new_weights


def test_seed_canary_runs_5_25_50_100_with_10_10_30_minute_watches_then_30_minute_watch():
    trace = simulate(make_spec(), "2.0.0", "1.0.0")
    assert trace.state.status == "promoted"
    assert [(t, w) for t, w in trace.weights] == [
        (0.0, {"2.0.0": 5, "1.0.0": 95}), (600.0, {"2.0.0": 25, "1.0.0": 75}),
        (1200.0, {"2.0.0": 50, "1.0.0": 50}), (3000.0, {"2.0.0": 100})]
    assert trace.steps[-1][0] == 3000.0 + 1800.0  # the post-promotion watch
    assert trace.running["1.0.0"] == 2  # the previous version is kept for instant rollback


def test_error_rate_held_for_5_minutes_at_25_percent_rolls_back_down_the_staircase():
    trace = simulate(make_spec(), "2.0.0", "1.0.0", metric=errors_when(lambda t, w: t > 600))
    assert trace.state.status == "rolled_back"
    assert new_weights(trace) == [5, 25, 10, 0]
    assert [t for t, _ in trace.weights] == [0.0, 600.0, 900.0, 1500.0]  # breach after 5m; errors persist 10m at 10%
    assert trace.running["2.0.0"] == 0
    rollback = next(d for _, d in trace.decisions if d.kind == "rollback")
    values = rollback.data["values"]
    assert isinstance(values, dict)  # Decision.data holds objects; "values" is each rule's value by rule key
    assert "error_rate" in rollback.message and values["0:error_rate"] == 0.30
    assert "error_rate > 5% for 5m" in (trace.state.reason or "")


def test_a_short_spike_neither_breaches_nor_fails_the_step():
    # 30 s of 30 % errors in a 10-minute step: not held for 5m, and 1.5 % over the whole step.
    trace = simulate(make_spec(), "2.0.0", "1.0.0", metric=errors_when(lambda t, w: 700 <= t < 730))
    assert trace.state.status == "promoted"


def test_errors_that_come_and_go_fail_the_step_on_its_whole_evidence():
    # Every other evaluation fails: the 5-minute rule never holds, but the step saw 15 % errors overall.
    trace = simulate(make_spec(), "2.0.0", "1.0.0", metric=errors_when(lambda t, w: w >= 5 and int(t / 10) % 2))
    assert trace.state.status == "rolled_back"
    assert new_weights(trace) == [5, 0]  # failed at the end of step 1, never reached 25 %
    assert "error_rate over the step (10m) was 15%" in (trace.state.reason or "")


def test_latency_rule_breach_rolls_back():
    metric = lambda t, m, w: 3.0 if (m == "latency_p95" and w >= 5) else 0.0  # noqa: E731
    trace = simulate(make_spec(), "2.0.0", "1.0.0", metric=metric)
    assert trace.state.status == "rolled_back"
    assert "latency_p95 > 2.5s" in (trace.state.reason or "")


def test_immediate_mode_and_critical_tier_go_straight_to_zero():
    for spec in (make_spec(rollback={"mode": "immediate"}), make_spec(tier="critical")):
        trace = simulate(spec, "2.0.0", "1.0.0", metric=errors_when(lambda t, w: w >= 25))
        assert new_weights(trace) == [5, 25, 0]


def test_errors_that_keep_rising_skip_the_rest_of_the_staircase():
    def metric(t, m, w):
        if m != "error_rate":
            return 0.01
        return 0.0 if t < 3000 else 0.10 + (t - 3000) / 1000.0  # rising after promotion
    trace = simulate(make_spec(), "2.0.0", "1.0.0", metric=metric)
    assert trace.state.status == "rolled_back"
    assert new_weights(trace)[-3:] == [100, 50, 0]
    rise = next(d for _, d in trace.decisions if "rose from" in d.message)
    assert "beyond rollback.rising 50%" in rise.message and "straight to 0%" in rise.message
    before, now = rise.data["before"], rise.data["now"]
    assert isinstance(before, float) and isinstance(now, float) and now >= before * 1.5
    assert rise.data["threshold"] == 0.5


def test_breach_during_post_promotion_watch_rolls_back_from_100_through_50_10_0():
    trace = simulate(make_spec(), "2.0.0", "1.0.0", metric=errors_when(lambda t, w: t >= 3100))
    assert new_weights(trace) == [5, 25, 50, 100, 50, 10, 0]
    assert trace.state.status == "rolled_back"


def test_no_data_never_advances_and_an_abort_ends_it():
    trace = simulate(make_spec(), "2.0.0", "1.0.0", metric=lambda t, m, w: None, commands={7200.0: "abort"})
    assert trace.state.status == "aborted"
    assert new_weights(trace) == [5, 0]  # two hours at 5 %, never 25 %
    assert any(d.kind == "waiting" and "no data for error_rate" in d.message for _, d in trace.decisions)


def test_unreachable_metric_source_for_one_rule_blocks_promotion():
    metric = lambda t, m, w: None if m == "latency_p95" else 0.0  # noqa: E731
    trace = simulate(make_spec(), "2.0.0", "1.0.0", metric=metric, commands={5000.0: "abort"})
    assert max(new_weights(trace)) == 5


@pytest.mark.parametrize("check", ["health", "smoke"])
def test_failed_health_or_smoke_aborts_before_any_user_traffic(check):
    trace = simulate(make_spec(), "2.0.0", "1.0.0", failing=frozenset({f"{check}:2.0.0"}))
    assert trace.state.status == "aborted"
    assert all(w.get("2.0.0", 0) == 0 for _, w in trace.weights)
    assert trace.running["2.0.0"] == 0
    assert f"{check} failed" in (trace.state.reason or "")


def test_unhealthy_running_version_refuses_to_start_anything():
    trace = simulate(make_spec(), "2.0.0", "1.0.0", failing=frozenset({"health:1.0.0"}))
    assert trace.state.status == "aborted"
    assert "2.0.0" not in trace.running and trace.weights == []


def test_step_without_pause_waits_for_promote():
    spec = make_spec(strategy={"canary": {"steps": [{"weight": 10}, {"weight": 50, "pause": "1m"}]}})
    trace = simulate(spec, "2.0.0", "1.0.0", commands={3 * 3600.0: "promote"})
    assert trace.state.status == "promoted"
    assert trace.weights[0] == (0.0, {"2.0.0": 10, "1.0.0": 90})
    assert trace.weights[1][0] == 3 * 3600.0  # held at 10 % for three hours until promoted
    assert new_weights(trace) == [10, 100]  # promote skips the remaining steps


def test_abort_and_rollback_commands_mid_canary():
    aborted = simulate(make_spec(), "2.0.0", "1.0.0", commands={700.0: "abort"})
    assert aborted.state.status == "aborted" and new_weights(aborted) == [5, 25, 0]
    rolled = simulate(make_spec(), "2.0.0", "1.0.0", commands={700.0: "rollback"})
    assert rolled.state.status == "rolled_back" and new_weights(rolled) == [5, 25, 0]


def test_promote_is_refused_during_a_rollback():
    spec = make_spec()
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0)
    st = exits.start_rollback(st.model_copy(update={"phase": "step", "weight": 25}), spec, "breach", 10.0)
    _, error = decide.command(st, spec, "promote", 11.0)
    assert error and "rolling back" in error


def test_bluegreen_switches_from_0_to_100_and_keeps_blue():
    trace = simulate(make_spec(strategy={"bluegreen": {}}), "2.0.0", "1.0.0")
    assert new_weights(trace) == [100]
    assert trace.state.status == "promoted" and trace.running["1.0.0"] == 2


def test_bluegreen_ramp_steps_are_analysed():
    spec = make_spec(strategy={"bluegreen": {"ramp": [{"weight": 10, "pause": "5m"}]}})
    trace = simulate(spec, "2.0.0", "1.0.0", metric=errors_when(lambda t, w: w >= 10))
    assert trace.state.status == "rolled_back"


def test_first_deploy_goes_straight_to_100_after_checks():
    trace = simulate(make_spec(), "1.0.0", None)
    assert trace.state.status == "promoted" and trace.state.strategy == "initial"
    assert new_weights(trace, "1.0.0") == [100]
    assert not any(isinstance(a, Analyze) for _, a in trace.steps)


@pytest.mark.parametrize(("n", "surge", "unavailable"), [(3, 1, 1), (2, 0, 1), (4, 2, 0), (5, 1, 2)])
def test_rolling_respects_surge_and_unavailability_at_every_moment(n, surge, unavailable):
    spec = make_spec(platform={"command": "app {port}", "instances": n},
                     strategy={"rolling": {"max_surge": surge, "max_unavailable": unavailable}})
    trace = simulate(spec, "2.0.0", "1.0.0")
    assert trace.state.status == "promoted"
    running: dict[str, int] = {"1.0.0": n}
    for _, action in trace.steps:
        if isinstance(action, Route):
            assert sum(s.instances or 0 for s in action.shares) >= n - unavailable
        if isinstance(action, Start):
            running[action.version] = action.count
        elif isinstance(action, Stop):
            running[action.version] = min(running.get(action.version, 0), action.keep)
        assert sum(running.values()) <= n + surge
    assert trace.running == {"1.0.0": 0, "2.0.0": n}
    assert trace.weights[-1][1] == {"2.0.0": 100}


def test_rolling_breach_rolls_back_by_rolling_the_other_way():
    spec = make_spec(platform={"command": "app {port}", "instances": 3},
                     strategy={"rolling": {"pause": "10m"}})
    trace = simulate(spec, "2.0.0", "1.0.0", metric=errors_when(lambda t, w: w > 0))
    assert trace.state.status == "rolled_back"
    assert trace.weights[-1][1] == {"1.0.0": 100}
    assert trace.running == {"1.0.0": 3, "2.0.0": 0}


def test_rolling_health_failure_on_first_batch_aborts_without_touching_traffic():
    spec = make_spec(platform={"command": "app {port}", "instances": 3}, strategy={"rolling": {}})
    trace = simulate(spec, "2.0.0", "1.0.0", failing=frozenset({"health:2.0.0"}))
    assert trace.state.status == "aborted"
    assert all(w.get("2.0.0", 0) == 0 for _, w in trace.weights)


def test_a_resumed_controller_makes_exactly_the_same_decisions():
    """Persist and reload the state before every action (what a SIGKILL + resume does): the same trace, through a
    no-data pause, a promote, a staircase that holds, a promote again, a hold again and an operator rollback."""
    spec = make_spec()

    def metric(t: float, m: str, w: int) -> float | None:
        if t < 900:
            return None  # no traffic: step 1 pauses at its end (10m)
        if m == "error_rate":
            return 0.30 if w == 100 else 0.0  # fails at full load only: the staircase holds at 50 %
        return 0.05

    commands = {1000.0: "promote", 2000.0: "promote", 3000.0: "rollback"}

    def run(roundtrip: bool) -> Trace:
        return simulate(spec, "2.0.0", "1.0.0", metric=metric, commands=commands, roundtrip=roundtrip)

    again, once = run(roundtrip=True), run(roundtrip=False)
    assert [(t, repr(a)) for t, a in again.steps] == [(t, repr(a)) for t, a in once.steps]
    assert again.decisions == once.decisions
    kinds = [d.kind for _, d in once.decisions]
    assert kinds.count("paused") == 3 and "incident" in kinds  # no data, stair, stair
    assert new_weights(once) == [5, 100, 50, 100, 50, 0]
    assert once.state.status == "rolled_back"


def test_dead_instance_of_the_new_version_rolls_back_at_once():
    spec = make_spec()
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0)
    st = st.model_copy(update={"phase": "step", "routed": True, "weight": 25, "step": 1})
    st, decisions = decide.apply(st, spec, decide.next_action(st, spec, 0.0),
                                 Observation(at=10.0, values={}, dead=("127.0.0.1:4000",)), 10.0)
    assert st.phase == "rollback" and st.staircase == [0]
    assert "died" in decisions[0].message


def test_a_freeze_holds_the_canary_at_its_weight_and_analysis_still_rolls_back():
    freeze = lambda t: "paused by change freeze 'weekend'" if 300 <= t < 4 * 3600 else None  # noqa: E731
    held = simulate(make_spec(), "2.0.0", "1.0.0", held=freeze)
    assert held.weights[1][0] == 4 * 3600  # step 1 ended at 10m, but 25 % came only when the freeze ended
    assert held.state.status == "promoted"
    assert any(d.kind == "held" for _, d in held.decisions)
    broken = simulate(make_spec(), "2.0.0", "1.0.0", held=freeze,
                      metric=errors_when(lambda t, w: t > 3600))  # breaks during the freeze
    assert broken.state.status == "rolled_back" and new_weights(broken) == [5, 0]


def test_migrations_run_after_start_before_health_and_smoke_and_a_rollback_keeps_the_schema():
    """PrivateTrade: start at T+0, migrate at T+1, health, then smoke-test the new endpoints (they need the schema)."""
    spec = make_spec(migrations={"database": "sqlite:///app.db"})
    trace = simulate(spec, "2.0.0", "1.0.0", metric=errors_when(lambda t, w: t >= 600))
    new = [type(a).__name__ for _, a in trace.steps[2:7]]  # after the running version's prepare and health
    assert new == ["Start", "Migrate", "Health", "Smoke", "Route"]
    assert trace.state.status == "rolled_back"
    assert "migrations that remain applied: 001.sql" in (trace.state.reason or "")
    failed = simulate(spec, "2.0.0", "1.0.0", failing=frozenset({"migrate"}))
    assert failed.state.status == "aborted" and all(w.get("2.0.0", 0) == 0 for _, w in failed.weights)


def test_rolling_migrates_before_its_first_batch():
    spec = make_spec(platform={"command": "app {port}", "instances": 3}, strategy={"rolling": {}},
                     migrations={"database": "sqlite:///app.db"})
    trace = simulate(spec, "2.0.0", "1.0.0")
    starts = [i for i, (_, a) in enumerate(trace.steps) if isinstance(a, Start) and a.version == "2.0.0"]
    kinds = [type(a).__name__ for _, a in trace.steps]
    assert trace.state.status == "promoted" and kinds.index("Migrate") < starts[0]


def test_a_rollout_saved_before_migrations_moved_ahead_of_the_checks_still_migrates_before_traffic():
    """A state persisted by a release that migrated after smoke, resumed in its health phase: it must not reach
    traffic without its migrations; it migrates, then checks again."""
    spec = make_spec(migrations={"database": "sqlite:///app.db"})
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0).model_copy(update={"phase": "health"})
    seen = []
    while not isinstance(action := decide.next_action(st, spec, 0.0), Route):
        seen.append(type(action).__name__)
        st, _ = decide.apply(st, spec, action, Outcome(True, details={"recorded": ["001.sql"]}), 0.0)
    assert seen == ["Health", "Smoke", "Migrate", "Health", "Smoke"]
