"""Health during the rollout, in simulated time: the engine counts the controller's probes and rolls back.

Each test drives the real state machine (decide.next_action / decide.apply) through hours of a rollout in
milliseconds; ``health(t, weight)`` says what the probe of each new instance answered at ``t`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from releasegate.engine import decide
from releasegate.engine.analysis import rule_key
from releasegate.engine.simulate import passing
from releasegate.engine.state import Analyze, Decision, Migrate, Observation, Outcome, RolloutState, Route
from releasegate.spec.models import Spec

A, B = "127.0.0.1:4001", "127.0.0.1:4002"
SICK = "127.0.0.1:4001 /health answered 503, expected any 2xx ({\"status\": \"failing\"})"
Probe = Callable[[float, int], dict[str, str | None]]


def make_spec(**over: Any) -> Spec:
    data: dict[str, Any] = {"service": "shop", "platform": {"command": "app --port {port}", "instances": 2}}
    data.update(over)
    return Spec.model_validate(data)


def healthy(t: float, w: int) -> dict[str, str | None]:
    return {A: None, B: None}


@dataclass
class Run:
    state: RolloutState
    weights: list[tuple[float, int]] = field(default_factory=list)
    decisions: list[tuple[float, Decision]] = field(default_factory=list)

    def said(self, kind: str) -> list[str]:
        return [d.message for _, d in self.decisions if d.kind == kind]


def drive(spec: Spec, health: Probe = healthy, *, resume: bool = False, previous: str | None = "1.0.0") -> Run:
    """Run one rollout to its end; with ``resume``, the state goes through JSON after every action, as a
    controller killed and resumed after every action would see it."""
    now = 0.0
    metric = passing(spec.analysis.rules)
    st = decide.new_rollout("r", spec, "2.0.0", previous, now)
    run = Run(st)
    for _ in range(100_000):
        if not st.active:
            run.state = st
            return run
        if resume:
            st = RolloutState.model_validate_json(st.model_dump_json())
        action = decide.next_action(st, spec, now)
        result: Outcome | Observation = Outcome(True)
        if isinstance(action, Analyze):
            now = action.at
            values = {rule_key(i, r): metric(now, r.metric, st.weight) for i, r in enumerate(spec.analysis.rules)}
            result = Observation(at=now, values=values, whole=values if action.whole is not None else None,
                                 health=health(now, st.weight))
        elif isinstance(action, Route):
            run.weights.append((now, action.weight_of("2.0.0")))
        elif isinstance(action, Migrate):
            result = Outcome(True, details={"recorded": ["001.sql"]})
        st, decisions = decide.apply(st, spec, action, result, now)
        run.decisions += [(now, d) for d in decisions]
    raise AssertionError(f"the rollout did not finish (phase {st.phase})")


def test_a_version_whose_health_fails_after_the_first_traffic_is_rolled_back_not_promoted() -> None:
    """Health fails on one instance from 2 minutes in; 3 failures in a row (10 s apart) roll back, to 0 at once."""
    run = drive(make_spec(), lambda t, w: {A: SICK if t >= 120 else None, B: None})
    assert run.state.status == "rolled_back"
    assert run.weights == [(0.0, 5), (140.0, 0)]  # 120, 130, 140: the third failure in a row, straight to 0 %
    reason = run.state.reason or ""
    assert reason.startswith("health check of 2.0.0 failed 3 times in a row on 127.0.0.1:4001")
    assert SICK in reason
    assert run.said("health_failed") == [
        f"health check of 2.0.0 failed on {A} (1 of 3 in a row on {A}; last: {SICK})",
        f"health check of 2.0.0 failed on {A} (2 of 3 in a row on {A}; last: {SICK})"]
    rollback = next(d for _, d in run.decisions if d.kind == "rollback")
    assert rollback.data["instance"] == A and rollback.data["failures"] == 3 and rollback.data["last"] == SICK


def test_failures_count_only_in_a_row_and_the_threshold_is_the_spec_s() -> None:
    flapping = lambda t, w: {A: SICK if int(t // 10) % 3 else None, B: None}  # noqa: E731 - F F ok F F ok ...
    assert drive(make_spec(), flapping).state.status == "promoted"
    strict = drive(make_spec(health={"failure_threshold": 2}), flapping)
    assert strict.state.status == "rolled_back" and "failed 2 times in a row" in (strict.state.reason or "")


def test_every_instance_down_for_down_after_rolls_back() -> None:
    """Judgify: "service down 30 s". With a high per-instance threshold, the outage itself is the trigger."""
    spec = make_spec(health={"failure_threshold": 100, "down_after": "30s"})
    def down(t: float, w: int) -> dict[str, str | None]:
        return {A: SICK, B: "127.0.0.1:4002 /health: connection refused"} if t >= 300 else healthy(t, w)

    run = drive(spec, down)
    assert run.state.status == "rolled_back"
    assert run.weights[-1] == (330.0, 0)  # down at 300, 310, 320, 330: 30 s
    assert (run.state.reason or "").startswith("every instance of 2.0.0 failed its health check for 30s")
    # one instance up keeps the service up: no rollback on down_after alone
    half = lambda t, w: {A: SICK if 300 <= t < 600 else None, B: None}  # noqa: E731
    assert drive(spec, half).state.status == "promoted"


def test_a_resumed_controller_keeps_counting_where_the_last_one_stopped() -> None:
    sick = lambda t, w: {A: SICK if t >= 600 else None, B: None}  # noqa: E731
    resumed, straight = drive(make_spec(), sick, resume=True), drive(make_spec(), sick)
    assert resumed.weights == straight.weights and resumed.state.reason == straight.state.reason
    assert resumed.state.status == "rolled_back" and resumed.state.health_failures == {A: 3}


def test_health_failing_in_the_post_promotion_watch_skips_the_staircase() -> None:
    """The seeds' staircase is 100 -> 50 -> 10 -> 0 for a breach; an unhealthy version goes to 0 at once."""
    run = drive(make_spec(), lambda t, w: {A: SICK, B: SICK} if t >= 3100 else healthy(t, w))
    assert run.state.status == "rolled_back"
    assert [w for _, w in run.weights] == [5, 25, 50, 100, 0]


def test_health_failing_during_a_staircase_rollback_goes_straight_to_0() -> None:
    spec = make_spec(analysis={"interval": "10s", "rules": [{"metric": "error_rate", "max": 0.05, "for": "1m"}]})
    errors = {"v": 0.0}

    def probe(t: float, w: int) -> dict[str, str | None]:
        errors["v"] = 0.3 if t >= 3100 else 0.0  # breach in the watch: staircase from 100
        return {A: SICK, B: None} if t >= 3200 else healthy(t, w)

    now = 0.0
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", now)
    weights = []
    while st.active:
        action = decide.next_action(st, spec, now)
        result: Outcome | Observation = Outcome(True)
        if isinstance(action, Analyze):
            now = action.at
            health = probe(now, st.weight)
            values: dict[str, float | None] = {rule_key(0, spec.analysis.rules[0]): errors["v"]}
            result = Observation(at=now, values=values, whole=values if action.whole is not None else None,
                                 health=health)
        elif isinstance(action, Route):
            weights.append(action.weight_of("2.0.0"))
        st, _ = decide.apply(st, spec, action, result, now)
    assert st.status == "rolled_back"
    assert weights[-3:] == [100, 50, 0]  # 50 % is a stair; the failing health checks skip 10 %


def test_rolling_batches_are_health_checked_and_rolled_back_the_other_way() -> None:
    spec = make_spec(platform={"command": "app {port}", "instances": 3}, strategy={"rolling": {"pause": "1m"}})
    run = drive(spec, lambda t, w: {A: SICK} if w > 0 else {})
    assert run.state.status == "rolled_back"
    assert "failed 3 times in a row on 127.0.0.1:4001" in (run.state.reason or "")
    assert run.weights[-1][1] == 0


def test_without_probes_nothing_changes() -> None:
    """Observations without health (a platform that cannot be probed) neither count nor roll back."""
    run = drive(make_spec(), lambda t, w: {})
    assert run.state.status == "promoted" and run.state.health_failures == {}
