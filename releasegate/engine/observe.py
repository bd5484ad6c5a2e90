"""What one analysis interval does to a rollout (the ``Observation`` the controller gathered, engine/state.py).

Order matters and is the safety argument: failing health checks first (engine/health.py: straight to 0 %), then
dead instances of the new version and breached rules (roll back), then a dead baseline (engine/baseline.py: its
traffic goes back), then the sequential judge (engine/judging.py: a regression rolls back, only a pass closes a
step), and only then may a step close or the watch end, and never without evidence (engine/pause.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from releasegate.engine import baseline, health, judging, staircase
from releasegate.engine.analysis import STEP_PROMISE, WATCH_PROMISE, Verdict, evaluate, gate, record_samples
from releasegate.engine.exits import ending, start_rollback
from releasegate.engine.pause import no_data_now, pause, track_no_data, wait
from releasegate.engine.phase import Applied
from releasegate.engine.phase import enter as _to
from releasegate.engine.state import Analyze, Decision, Observation, RolloutState
from releasegate.spec.models import Spec

if TYPE_CHECKING:
    from releasegate.judge import Verdict as JudgeVerdict


def observe(st: RolloutState, spec: Spec, action: Analyze, obs: Observation, now: float) -> Applied:
    """Fold one analysis interval in: health checks first, a trigger goes straight to 0 %."""
    if obs.interrupted:
        return st, []
    st, noted, trigger = health.track(st, spec, obs)
    if trigger is not None:
        if st.phase in ("step", "watch"):
            return start_rollback(st, spec, trigger.message, now, immediate=True), [trigger]
        if st.phase == "rollback" and st.staircase[:1] != [0]:
            return _to(st, "rollback", now, staircase=[0]), [
                Decision("rollback", f"{trigger.message}: straight to 0%", trigger.data)]
    st, decisions = _observe(st, spec, action, obs, now)
    return st, noted + decisions


def _observe(st: RolloutState, spec: Spec, action: Analyze, obs: Observation, now: float) -> Applied:
    if obs.interrupted:
        return st, []
    st = record_samples(st, spec, obs)
    verdict = evaluate(spec.analysis.rules, st.samples, obs.at, spec.analysis.interval)
    values = {k: v for k, v in verdict.latest.items()}
    p = st.phase
    if p == "rollback":
        return staircase.observe(st, spec, obs, verdict, now)
    if p in ("step", "watch"):
        if obs.dead:
            why = f"instance(s) of {st.version} died: {', '.join(obs.dead)}"
            return start_rollback(st, spec, why, now, immediate=True), [Decision("rollback", why, {"values": values})]
        if verdict.breached:
            return staircase.breach(st, spec, verdict, obs.at, now)
    if p == "step" and obs.dead_baseline and st.baseline_up and not st.baseline_lost:
        return baseline.lost(st, spec, obs.dead_baseline, obs.at)
    if p == "step":
        st, judged = judging.judge(st, spec, obs.judge)
        if judged is None:
            return _observe_step(st, spec, action, obs, verdict, now)
        said = judging.shown(judged)
        if judged.outcome == "regression":
            why = judging.regression_reason(st, spec, judged)
            return start_rollback(st, spec, why, now, immediate=True), [
                Decision("rollback", why, {"values": values, "judge": said, "weight": st.weight})]
        st, decisions = _observe_step(st, spec, action, obs, verdict, now, judged)
        return st, [Decision(d.kind, d.message, {**d.data, "judge": said}) for d in decisions]
    if p == "watch":
        return _observe_watch(st, spec, action, obs, verdict, now)
    return st, []


def _observe_step(st: RolloutState, spec: Spec, action: Analyze, obs: Observation, verdict: Verdict,
                  now: float, judged: JudgeVerdict | None = None) -> Applied:
    """A step passes on its own whole evidence, never without it; no data for too long pauses it."""
    values = dict(verdict.latest)
    step = spec.strategy.steps[st.step]
    st, paused = track_no_data(st, spec, obs, verdict, f"promotes {st.version} to 100% without that evidence")
    if paused:
        return st, paused
    closing = st.promote_requested or (step.pause is not None and obs.at >= st.phase_started + step.pause)
    if st.paused is not None:  # nothing advances on its own; the step's own evidence can still fail it
        if closing and gate(spec.analysis.rules, obs, action.whole)[0] == "fail":
            return _fail_step(st, spec, action, obs, now)
        return st, [Decision("analysis", "analysis while paused", {"values": values})]
    if step.pause is None and not st.promote_requested:
        missing = no_data_now(st, spec, obs, verdict, STEP_PROMISE)
        return wait(st, f"waiting for `releasegate promote {st.service}`"
                    + (f" ({missing.removeprefix('waiting: ')})" if missing else ""), values,
                    "analysis passed" if verdict.healthy else "analysis inconclusive")
    if not closing:
        return wait(st, no_data_now(st, spec, obs, verdict, STEP_PROMISE), values)
    verdict_of_step, why = gate(spec.analysis.rules, obs, action.whole)
    if st.promote_requested:
        verdict_of_step = "pass"
    if verdict_of_step == "fail":
        return _fail_step(st, spec, action, obs, now)
    if verdict_of_step == "wait":
        return wait(st, why, values)
    judge = spec.analysis.judge
    if judge is not None and not st.promote_requested and (judged is None or judged.outcome != "pass"):
        until = st.phase_started + (step.pause or 0.0) + judge.max_extension  # the step extended, then paused
        if obs.at < until:
            return wait(st, judging.waiting_reason(st, spec, judged, until, obs.judge_missing), values)
        why = judging.paused_reason(st, spec, judged, obs.judge_missing)
        return pause(st, "judge", why, obs.at, {"values": values})
    if obs.held:
        return st.model_copy(update={"waiting": obs.held}), [Decision("held", obs.held, {"values": values})]
    nxt = st.step + 1
    d = Decision("analysis_passed", f"step {st.step + 1} passed at {st.weight}%", {"values": values, "step": obs.whole})
    if st.promote_requested or nxt >= len(spec.strategy.steps):
        return _to(st, "promote", now), [d]
    return _to(st, "step", now, step=nxt), [d]


def _fail_step(st: RolloutState, spec: Spec, action: Analyze, obs: Observation, now: float) -> Applied:
    why = gate(spec.analysis.rules, obs, action.whole)[1]
    if st.phase == "watch":
        return staircase.failed_step(st, spec, f"post-promotion watch failed: {why}", obs, now)
    return staircase.failed_step(st, spec, f"step {st.step + 1} at {st.weight}% failed: {why}", obs, now)


def _observe_watch(st: RolloutState, spec: Spec, action: Analyze, obs: Observation, verdict: Verdict,
                   now: float) -> Applied:
    """The post-promotion watch ends promoted only on evidence: without data it waits, then pauses."""
    values = dict(verdict.latest)
    st, paused = track_no_data(st, spec, obs, verdict, f"ends the watch: {st.version} stays at 100%")
    if paused:
        return st, paused
    if obs.at < st.phase_started + spec.analysis.post_promotion:
        if st.paused is not None:
            return st, [Decision("analysis", "post-promotion analysis while paused", {"values": values})]
        return wait(st, no_data_now(st, spec, obs, verdict, WATCH_PROMISE), values, "post-promotion analysis")
    verdict_of_watch, why = gate(spec.analysis.rules, obs, action.whole, promise=WATCH_PROMISE)
    if verdict_of_watch == "fail":
        return _fail_step(st, spec, action, obs, now)
    if st.paused is not None:
        return st, [Decision("analysis", "post-promotion analysis while paused", {"values": values})]
    if verdict_of_watch == "wait":
        return wait(st, why, values)
    why = f"promoted: {st.version} serves 100%, watched for the post-promotion window"
    return ending(st, "promoted", why, now), [Decision("watch_passed", why, {"values": values, "step": obs.whole})]
