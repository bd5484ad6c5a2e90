"""Never promote without evidence, in simulated time: no data waits (saying why), and after
``analysis.no_data_timeout`` pauses for an operator; operator commands in every phase and pause."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from releasegate.engine import decide, exits
from releasegate.engine.simulate import Trace, simulate
from releasegate.engine.state import Analyze, Observation, RolloutState
from releasegate.spec.models import Spec
from tests.support.simulated import (
    PROMOTED_AT,
    T0,
    errors_when,
    kinds,
    make_spec,
    messages,
    new_weights,
)

FINE = errors_when(lambda t, w: False)


def no_data_after(t0: float, base: Any = FINE) -> Any:
    return lambda t, m, w: None if t >= t0 else base(t, m, w)


def run(metric: Any, spec: Spec | None = None, **kw: Any) -> Trace:
    return simulate(spec or make_spec(), "2.0.0", "1.0.0", metric=metric, **kw)


def test_a_watch_without_data_is_never_promoted_and_pauses_after_the_watch():
    # Through a router that measures nothing, a green failing every request was promoted this way.
    trace = run(no_data_after(PROMOTED_AT))
    assert "watch_passed" not in kinds(trace) and trace.state.status == "running"
    assert new_weights(trace)[-1] == 100
    assert any(m.endswith("the watch never passes without evidence") for m in messages(trace, "waiting"))
    st = trace.state
    assert st.phase == "watch" and st.paused is not None and st.paused.kind == "no_data"
    assert st.paused.since == T0 + PROMOTED_AT + 1800  # no data for the whole post-promotion window
    assert "`releasegate promote shop` ends the watch: 2.0.0 stays at 100%" in st.paused.reason
    promoted = run(no_data_after(PROMOTED_AT), commands={PROMOTED_AT + 7200: "promote"})
    assert promoted.state.status == "promoted"
    assert promoted.state.reason == "promoted: 2.0.0 serves 100% (watch ended by operator)"


def test_a_step_without_traffic_says_so_at_once_and_pauses_when_its_time_is_up():
    trace = run(lambda t, m, w: None)
    first = trace.decisions[[d.kind for _, d in trace.decisions].index("waiting")]
    assert first[0] == 10.0  # the first evaluation already says why the step cannot pass
    assert first[1].message == ("waiting: no data for error_rate, latency_p95 on 2.0.0 in the last 10s (no traffic?); "
                                "a step never advances without evidence")
    st = trace.state
    assert new_weights(trace) == [5] and st.phase == "step" and st.step == 0
    assert st.paused is not None and st.paused.since == T0 + 600  # the step's pause: 10m
    assert st.paused.reason.startswith("paused: no data for error_rate, latency_p95 on 2.0.0 for 10m (no traffic?)")
    assert "`releasegate promote shop` promotes 2.0.0 to 100% without that evidence" in st.paused.reason
    assert "`releasegate rollback shop` rolls back" in st.paused.reason
    assert kinds(trace).count("waiting") == 1  # said once, not at every evaluation


def test_a_paused_step_never_advances_on_its_own_even_when_the_data_comes_back():
    trace = run(lambda t, m, w: None if t <= 600 else FINE(t, m, w), paused_until=6 * 3600)
    assert new_weights(trace) == [5] and trace.state.paused is not None


def test_promote_goes_on_from_a_no_data_pause_and_rollback_ends_it():
    after = run(lambda t, m, w: None if t <= 600 else FINE(t, m, w), commands={900.0: "promote"})
    assert new_weights(after) == [5, 100] and after.state.status == "promoted"
    back = run(lambda t, m, w: None, commands={900.0: "rollback"})
    assert new_weights(back) == [5, 0] and back.state.status == "rolled_back"


def test_no_data_timeout_is_configurable():
    spec = make_spec(analysis={"no_data_timeout": "2m"})
    trace = run(lambda t, m, w: None, spec)
    assert trace.state.paused is not None and trace.state.paused.since == T0 + 120
    assert "for 2m" in trace.state.paused.reason


def test_a_short_step_is_not_paused_before_three_evaluations_by_default():
    """A 10 s step analysed every 10 s: its first window may hold no evidence yet (requests in flight, a source's
    baseline reading); the default timeout waits three evaluations, then pauses as usual."""
    spec = make_spec(strategy={"canary": {"steps": [{"weight": 5, "pause": "10s"}]}})
    late = run(lambda t, m, w: None if t <= 10 else FINE(t, m, w), spec)
    assert late.state.status == "promoted" and "paused" not in kinds(late)
    never = run(lambda t, m, w: None, spec)
    assert never.state.paused is not None and never.state.paused.since == T0 + 30


def test_data_that_comes_and_goes_resets_the_clock():
    # One interval in three has traffic: never 10 minutes without data, and the step's whole window has data.
    trace = run(lambda t, m, w: FINE(t, m, w) if int(t / 10) % 3 == 0 else None)
    assert trace.state.status == "promoted" and "paused" not in kinds(trace)


def test_while_paused_a_breach_still_rolls_back():
    def metric(t: float, m: str, w: int) -> float | None:
        if m == "latency_p95":
            return None  # a rule the source cannot feed: the step pauses at 10m
        return 0.30 if t > 2000 else 0.0
    trace = run(metric, paused_until=4000)
    assert "paused" in kinds(trace)
    assert trace.state.status == "rolled_back" and new_weights(trace) == [5, 0]
    assert "error_rate > 5% for 5m held" in (trace.state.reason or "")


def test_a_manual_step_has_no_no_data_timeout_but_says_there_is_no_traffic():
    spec = make_spec(strategy={"canary": {"steps": [{"weight": 10}]}})
    trace = run(lambda t, m, w: None, spec, commands={7200.0: "abort"})
    assert "paused" not in kinds(trace) and trace.state.status == "aborted"
    assert messages(trace, "waiting")[0].startswith("waiting for `releasegate promote shop` (no data for error_rate")


def test_the_controllers_reasons_name_what_is_missing():
    spec = make_spec()
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0)
    st = st.model_copy(update={"phase": "step", "routed": True, "weight": 5, "phase_started": 0.0})
    why = dict.fromkeys(("0:error_rate", "1:latency_p95"), "no traffic to 2.0.0 in the last 10s")
    st, said = decide.apply(st, spec, decide.next_action(st, spec, 0.0),
                            Observation(at=10.0, values={"0:error_rate": None, "1:latency_p95": None}, missing=why),
                            10.0)
    assert st.waiting == "waiting: no traffic to 2.0.0 in the last 10s; a step never advances without evidence"
    assert said[0].kind == "waiting"
    action = decide.next_action(st.model_copy(update={"last_tick": 600.0}), spec, 600.0)
    assert isinstance(action, Analyze) and action.at == 610.0 and action.whole == 610.0
    mixed = {"0:error_rate": "no traffic to 2.0.0 in the last 10m",
             "1:latency_p95": "prometheus at http://127.0.0.1:9 unreachable: connection refused"}
    st, _ = decide.apply(st, spec, action, Observation(at=610.0, values={"0:error_rate": 0.0, "1:latency_p95": 0.1},
                                                       whole={"0:error_rate": None, "1:latency_p95": None},
                                                       whole_missing=mixed), 610.0)
    assert st.waiting == ("waiting: error_rate: no traffic to 2.0.0 in the last 10m; latency_p95: prometheus at "
                          "http://127.0.0.1:9 unreachable: connection refused; a step never advances without evidence")


def test_rolling_batches_need_evidence_too_and_pause_without_it():
    spec = make_spec(platform={"command": "app {port}", "instances": 3}, strategy={"rolling": {"pause": "5m"}})
    trace = run(lambda t, m, w: None, spec)
    st = trace.state
    assert st.phase == "roll" and st.paused is not None and st.paused.kind == "no_data"
    assert "a batch never passes without evidence" in messages(trace, "waiting")[0]
    assert "goes on replacing 1.0.0 with 2.0.0" in st.paused.reason
    on = run(lambda t, m, w: None, spec, commands={1000.0: "promote"})
    assert on.state.status == "promoted" and on.running == {"1.0.0": 0, "2.0.0": 3}
    back = run(lambda t, m, w: None, spec, commands={1000.0: "rollback"})
    assert back.state.status == "rolled_back" and back.running == {"1.0.0": 3, "2.0.0": 0}


# --- operator commands in every phase and pause ----------------------------------------------------------------------


def _state(metric: Any, spec: Spec | None = None, **kw: Any) -> tuple[RolloutState, Spec]:
    spec = spec or make_spec()
    return run(metric, spec, **kw).state, spec


def _stair_running() -> tuple[RolloutState, Spec]:
    spec = make_spec()
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0).model_copy(
        update={"phase": "watch", "weight": 100, "routed": True})
    st = exits.start_rollback(st, spec, "error_rate > 5% for 5m held (now 30%) at 100%", 10.0)
    return st.model_copy(update={"routed": True, "weight": 50}), spec


SITUATIONS: dict[str, Callable[[], tuple[RolloutState, Spec]]] = {
    "step, paused for no data": lambda: _state(lambda t, m, w: None),
    "watch, paused for no data": lambda: _state(no_data_after(PROMOTED_AT)),
    "staircase, stair undecided": _stair_running,
    "staircase, holding at a stair": lambda: _state(errors_when(lambda t, w: t > PROMOTED_AT and w == 100)),
}


def _situation(name: str) -> tuple[RolloutState, Spec]:
    if name == "step, waiting for data":
        spec = make_spec()
        st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0).model_copy(
            update={"phase": "step", "routed": True, "weight": 5, "waiting": "waiting: no data (no traffic?)"})
        return st, spec
    return SITUATIONS[name]()


@pytest.mark.parametrize(("situation", "kind", "expected"), [
    ("step, waiting for data", "promote", ("promote", None)),
    ("step, waiting for data", "rollback", ("rollback", [0])),
    ("step, waiting for data", "abort", ("rollback", [0])),
    ("step, paused for no data", "promote", ("promote", None)),
    ("step, paused for no data", "rollback", ("rollback", [0])),
    ("step, paused for no data", "abort", ("rollback", [0])),
    ("watch, paused for no data", "promote", ("finish", None)),
    ("watch, paused for no data", "rollback", ("rollback", [0])),
    ("watch, paused for no data", "abort", ("rollback", [0])),
    ("staircase, stair undecided", "promote", "refused"),
    ("staircase, stair undecided", "rollback", ("rollback", [0])),
    ("staircase, stair undecided", "abort", ("rollback", [0])),
    ("staircase, holding at a stair", "promote", ("promote", None)),
    ("staircase, holding at a stair", "rollback", ("rollback", [0])),
    ("staircase, holding at a stair", "abort", ("rollback", [0])),
])
def test_operator_commands_in_every_pause(situation, kind, expected):
    st, spec = _situation(situation)
    new, error = decide.command(st, spec, kind, st.updated_at + 1)
    if expected == "refused":
        assert error is not None and "once the staircase holds at a stair" in error and new == st
        return
    assert error is None
    phase, stairs = expected
    assert new.phase == phase and new.paused is None
    if stairs is not None:
        assert new.staircase == stairs
        assert new.outcome == ("aborted" if kind == "abort" else "rolled_back")
    if situation.startswith("staircase") and kind != "promote":
        assert new.staircase_from == 100 and (new.reason or "").startswith("error_rate > 5%")  # why it started
    if phase == "promote":
        assert new.staircase == [] and new.reason is None and new.outcome is None
    if phase == "finish":
        assert new.outcome == "promoted"


@pytest.mark.parametrize("strategy", [{"canary": {"steps": [{"weight": 5, "pause": "10m"}]}},
                                      {"rolling": {"pause": "10m"}}])
def test_a_pause_before_the_step_ends_keeps_saying_why(strategy):
    spec = make_spec(strategy=strategy, analysis={"no_data_timeout": "1m"})
    trace = run(lambda t, m, w: None, spec, paused_until=3600)
    st = trace.state
    assert st.paused is not None and st.paused.since == T0 + 60
    assert st.waiting == st.paused.reason and kinds(trace).count("paused") == 1
