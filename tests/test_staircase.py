"""The rollback staircase as the MegaCity guide writes it (section 5.1), in simulated time: 100 -> 50 % at once,
down a stair only while errors persist, hold for an operator where they stop, 0 % is an incident."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from releasegate.engine import decide
from releasegate.engine.simulate import Trace, simulate
from releasegate.engine.state import Observation
from tests.support.simulated import (
    PROMOTED_AT,
    T0,
    errors_when,
    kinds,
    make_spec,
    messages,
    new_weights,
    weight_times,
)

AFTER = PROMOTED_AT  # errors that start after the promotion breach at 100 % (for 5m) at AFTER + 300
BREACH = AFTER + 300


def run(metric, **kw) -> Trace:
    spec = kw.pop("spec", None) or make_spec()
    return simulate(spec, "2.0.0", "1.0.0", metric=metric, **kw)


def test_errors_that_persist_step_down_50_for_5m_then_10_for_10m_then_0_and_declare_an_incident():
    trace = run(errors_when(lambda t, w: t > AFTER))
    assert trace.state.status == "rolled_back"
    assert new_weights(trace)[-4:] == [100, 50, 10, 0]
    assert weight_times(trace)[-3:] == [BREACH, BREACH + 300, BREACH + 300 + 600]  # the seed's 5 and 10 minutes
    persist = messages(trace, "errors_persist")
    assert len(persist) == 2 and persist[0].startswith("errors persist at 50% over the stair (5m): error_rate 30%")
    [incident] = [d for _, d in trace.decisions if d.kind == "incident"]
    assert "after the staircase from 100%" in incident.message and incident.data["from"] == 100
    assert kinds(trace).index("incident") > kinds(trace).index("errors_persist")


def test_errors_that_stop_at_a_stair_hold_there_paused_for_an_operator():
    trace = run(errors_when(lambda t, w: t > AFTER and w == 100))  # fails only under full load
    st = trace.state
    assert st.status == "running" and st.phase == "rollback" and st.weight == 50
    assert new_weights(trace)[-2:] == [100, 50]
    assert st.paused is not None and st.paused.kind == "stair" and st.paused.since == T0 + BREACH + 300
    assert st.waiting == st.paused.reason
    assert "errors stopped over the stair (5m: error_rate 0" in st.paused.reason
    assert "`releasegate promote shop` promotes 2.0.0 to 100% again" in st.paused.reason
    assert "`releasegate rollback shop` takes it to 0%" in st.paused.reason
    assert "incident" not in kinds(trace)


def test_held_long_after_its_wait_the_stair_never_moves_on_its_own():
    trace = run(errors_when(lambda t, w: t > AFTER and w == 100), paused_until=BREACH + 6 * 3600)
    assert new_weights(trace)[-1] == 50 and trace.state.paused is not None
    assert kinds(trace).count("paused") == 1


def test_promote_at_a_held_stair_promotes_again_and_the_watch_decides():
    transient = errors_when(lambda t, w: AFTER < t < BREACH + 60 and w == 100)
    trace = run(transient, commands={BREACH + 900: "promote"})
    assert new_weights(trace)[-3:] == [100, 50, 100]
    assert trace.state.status == "promoted"
    assert trace.steps[-1][0] == BREACH + 900 + 1800  # a full post-promotion watch again
    assert trace.state.reason == "promoted: 2.0.0 serves 100%, watched for the post-promotion window"


def test_rollback_at_a_held_stair_goes_to_0_and_is_an_incident():
    trace = run(errors_when(lambda t, w: t > AFTER and w == 100), commands={BREACH + 900: "rollback"})
    assert new_weights(trace)[-3:] == [100, 50, 0]
    assert trace.state.status == "rolled_back"
    assert "error_rate > 5% for 5m held" in (trace.state.reason or "")
    assert "rolled back by operator at 50%" in (trace.state.reason or "")
    assert "incident" in kinds(trace)


def test_a_breach_while_holding_resumes_the_staircase_at_the_next_stair():
    metric = errors_when(lambda t, w: (t > AFTER and w == 100) or t > BREACH + 1000)
    trace = run(metric, paused_until=BREACH + 3000)
    assert new_weights(trace)[-4:] == [100, 50, 10, 0]
    assert any("while holding at the stair" in m for m in messages(trace, "rollback"))
    assert trace.state.status == "rolled_back" and "incident" in kinds(trace)


def test_no_data_at_a_stair_is_no_evidence_of_recovery_so_it_steps_down():
    def metric(t: float, m: str, w: int) -> float | None:
        if w < 100:
            return None if t > AFTER else 0.0  # nobody reaches the new version any more
        return 0.3 if m == "error_rate" and t > AFTER else 0.05
    trace = run(metric)
    assert new_weights(trace)[-4:] == [100, 50, 10, 0]
    assert "no data for error_rate, latency_p95: no evidence of recovery" in messages(trace, "errors_persist")[0]


def test_noise_is_not_a_rise_the_staircase_runs_its_course():
    # 0.3007 -> 0.3021 and the like: errors persist, but they are not clearly rising.
    metric = errors_when(lambda t, w: t > AFTER, rate=0.3)
    noisy = lambda t, m, w: (0.3 + (t % 70) / 50_000 + (t - AFTER) / 1e6  # noqa: E731
                             if m == "error_rate" and t > AFTER else metric(t, m, w))
    trace = run(noisy)
    assert new_weights(trace)[-4:] == [100, 50, 10, 0]
    assert not any("straight to 0%" in d.message for _, d in trace.decisions)


def test_a_clear_rise_over_the_stair_goes_straight_to_0_with_the_numbers():
    def metric(t: float, m: str, w: int) -> float:
        if m != "error_rate":
            return 0.05
        return 0.0 if t <= AFTER else (0.10 if t <= BREACH else 0.10 + (t - BREACH) / 200)
    trace = run(metric)
    assert new_weights(trace)[-3:] == [100, 50, 0]
    [rise] = [d for _, d in trace.decisions if "rose from" in d.message]
    assert rise.data["before"] == pytest.approx(0.1) and rise.data["threshold"] == 0.5
    now = rise.data["now"]
    assert isinstance(now, float) and now >= 0.15
    assert rise.data["window"] == 30.0  # judged over three evaluations of the stair, never one interval
    assert "incident" in kinds(trace)


def test_a_version_failing_every_request_goes_to_0_at_once_with_the_reason():
    trace = run(errors_when(lambda t, w: t > AFTER, rate=1.0))
    assert new_weights(trace)[-2:] == [100, 0] and weight_times(trace)[-1] == BREACH
    reason = trace.state.reason or ""
    assert "error rate 100% is above rollback.immediate_error_rate 50%: straight to 0%" in reason
    [rollback] = [d for _, d in trace.decisions if d.kind == "rollback"]
    assert rollback.data["error_rate"] == 1.0 and rollback.data["immediate_error_rate"] == 0.5
    # The staircase applied and was cut short: still an incident, saying it did not run.
    assert messages(trace, "incident")[0].startswith("incident: 2.0.0 rolled back to 0% straight from 100% (the "
                                                     "staircase cut short)")


def test_an_error_rate_that_explodes_on_a_stair_goes_to_0_before_the_stair_ends():
    spec = make_spec(rollback={"rising": None})
    def metric(t: float, m: str, w: int) -> float:
        return (0.3 if t <= BREACH + 30 else 0.95) if m == "error_rate" and t > AFTER else 0.0
    trace = run(metric, spec=spec)
    assert new_weights(trace)[-3:] == [100, 50, 0]
    assert BREACH < weight_times(trace)[-1] < BREACH + 300
    assert any("over the stair" in m and "immediate_error_rate 50%" in m for m in messages(trace, "rollback"))


def test_the_immediate_threshold_and_the_rise_can_be_switched_off_or_moved():
    failing = errors_when(lambda t, w: t > AFTER, rate=1.0)
    off = run(failing, spec=make_spec(rollback={"immediate_error_rate": None}))
    assert new_weights(off)[-4:] == [100, 50, 10, 0]
    higher = run(errors_when(lambda t, w: t > AFTER, rate=0.6),
                 spec=make_spec(rollback={"immediate_error_rate": "70%"}))
    assert new_weights(higher)[-4:] == [100, 50, 10, 0]


def test_per_stair_waits_and_a_plain_list_with_step_wait():
    persist = errors_when(lambda t, w: t > AFTER)
    stairs = run(persist, spec=make_spec(rollback={"staircase": [{"weight": 50, "wait": "1m"},
                                                                 {"weight": 10, "wait": "2m"}, 0]}))
    assert weight_times(stairs)[-3:] == [BREACH, BREACH + 60, BREACH + 180]
    plain = run(persist, spec=make_spec(rollback={"staircase": [50, 10, 0], "step_wait": "1m"}))
    assert weight_times(plain)[-3:] == [BREACH, BREACH + 60, BREACH + 120]
    seed_stairs = run(persist, spec=make_spec(rollback={"step_wait": "2m"}))  # every default stair waits 2m
    assert new_weights(seed_stairs)[-3:] == [50, 10, 0]
    assert weight_times(seed_stairs)[-3:] == [BREACH, BREACH + 120, BREACH + 240]


def test_below_the_lowest_stair_it_goes_straight_to_0_without_an_incident():
    trace = run(errors_when(lambda t, w: w >= 5))
    assert new_weights(trace) == [5, 0]
    assert "incident" not in kinds(trace)


def test_critical_tier_goes_straight_to_0_and_its_incident_is_the_rollback_itself():
    trace = run(errors_when(lambda t, w: t > AFTER), spec=make_spec(tier="critical"))
    assert new_weights(trace)[-2:] == [100, 0]
    assert "incident" not in kinds(trace)  # notifications mark a critical rollback as the incident


def test_a_dead_instance_while_holding_goes_to_0_at_once():
    trace = run(errors_when(lambda t, w: t > AFTER and w == 100))
    st, spec = trace.state, make_spec()
    assert st.paused is not None
    action = decide.next_action(st, spec, st.updated_at)
    st, said = decide.apply(st, spec, action, Observation(at=st.updated_at + 10, dead=("127.0.0.1:4001",)),
                            st.updated_at + 10)
    assert st.phase == "rollback" and st.staircase == [0] and st.paused is None
    assert "died at 50%" in said[0].message and st.staircase_from == 100


# --- the spec: stairs with waits, a plain list, and every bad entry as FILE:LINE:COL ---------------------------------


def _spec_error(*rows: str) -> str:
    from releasegate.spec import SpecError, load_spec_text

    text = "\n".join(["service: shop", 'platform: {command: "app --port {port}"}', *rows]) + "\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "spec.yaml")
    [issue] = str(info.value).splitlines()
    return issue


def test_the_spec_takes_stairs_with_waits_percentages_and_plain_weights():
    spec = make_spec(rollback={"staircase": [{"weight": 60, "wait": "2m"}, 20, 0], "step_wait": "7m",
                               "rising": "25%", "immediate_error_rate": 0.8},
                     analysis={"no_data_timeout": "15m"})
    assert [(w, spec.rollback.wait_at(w)) for w in spec.rollback.weights[:-1]] == [(60, 120.0), (20, 420.0)]
    assert (spec.rollback.rising, spec.rollback.immediate_error_rate) == (0.25, 0.8)
    assert spec.analysis.no_data_timeout == 900.0
    again = type(spec).model_validate_json(spec.model_dump_json(by_alias=True))  # as stored for resume
    assert again == spec


@pytest.mark.parametrize(("rows", "expected"), [
    (["rollback:", "  staircase: [{weight: 50, wait: 5m}, {weight: 60, wait: 1m}, 0]"],
     "spec.yaml:4:39: staircase weights must decrease: 60 follows 50"),
    (["rollback:", "  staircase: [{weight: 50, wait: 5m}, {weight: 10, wait: 10m}]"],
     "spec.yaml:4:39: the staircase must end at 0, e.g. [50, 10, 0]"),
    (["rollback:", "  staircase:", "    - {weight: 50, wait: 5}", "    - 0"],
     "spec.yaml:5:26: write durations with a unit, e.g. '5s' or '5m' (got bare number 5)"),
    (["rollback:", "  staircase:", "    - {weight: 50, wait: 0s}", "    - 0"],
     "spec.yaml:5:26: a stair's wait must be longer than 0, e.g. 5m"),
    (["rollback:", "  staircase: [50, {weight: 0, wait: 1m}]"],
     "spec.yaml:4:37: the last stair (0 %) has no wait: at 0 % the new version is stopped"),
    (["rollback:", "  staircase: [50, fifty, 0]"],
     "spec.yaml:4:19: staircase entry 'fifty': write a weight (10) or a stair ({weight: 10, wait: 10m})"),
    (["rollback: {rising: 0%}"], "spec.yaml:3:20: rising must be above 0, e.g. 50% (or null: never cut the staircase "
                                 "short)"),
    (["rollback: {immediate_error_rate: 150%}"],
     "spec.yaml:3:34: immediate_error_rate is an error rate above 0 and at most 100%, e.g. 50% (or null: always use "
     "the staircase)"),
    (["analysis: {no_data_timeout: 0}"],
     "spec.yaml:3:29: no_data_timeout must be longer than 0, e.g. 10m (leave it out for the step's pause)"),
])
def test_bad_staircase_entries_are_located_errors(rows, expected):
    assert _spec_error(*rows) == expected


def test_plan_shows_the_rollback_plan_before_anything_is_deployed(tmp_path):
    spec = tmp_path / "shop.yaml"
    spec.write_text('service: shop\nplatform: {command: "app --port {port}"}\n')
    state = tmp_path / "state"
    done = subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(state), "plan", str(spec),
                           "--version", "2.0.0"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250"})
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())
    assert "on a breach 2.0.0 drops at once to the first stair below its weight: 50% (hold 5m) -> 10% (hold 10m) " \
           "-> 0%" in out
    assert "errors stopped -> hold there, paused for an operator" in out
    assert "error rate above 50% (rollback.immediate_error_rate)" in out and "declares an incident" in out
    assert not state.exists()
    spec.write_text('service: shop\ntier: critical\nplatform: {command: "app --port {port}"}\n')
    critical = subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(state), "plan", str(spec),
                               "--version", "2.0.0"], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "250"})
    assert "rollback mode: immediate (tier critical): on a breach 2.0.0 goes to 0% at once" in \
        " ".join(critical.stdout.split())
