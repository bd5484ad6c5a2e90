"""Rolling replacement: swap instances of ``src`` for ``dst`` in batches, never above target + max_surge
instances and never below target - max_unavailable in service.

Each batch: make room if the surge budget is spent (take ``max_unavailable`` old instances out of the routes,
drain, stop), start new ones, health-gate them (smoke-test the first batch), add them to the routes, then take the
surplus old ones out. Traffic follows instance counts. A rollback runs the same loop the other way round, so the
same limits hold while going back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from releasegate.engine import health, instances
from releasegate.engine.analysis import BATCH_PROMISE, evaluate, gate, record_samples, tick
from releasegate.engine.pause import no_data_now, track_no_data, wait
from releasegate.engine.state import (
    Action,
    Analyze,
    Decision,
    Health,
    Observation,
    Outcome,
    Result,
    RollingProgress,
    RolloutState,
    Route,
    Share,
    Smoke,
    Start,
    Status,
    Stop,
)
from releasegate.spec.models import Rolling, Spec, SshPlatform

if TYPE_CHECKING:
    Applied = tuple[RolloutState, list[Decision]]


def _cfg(spec: Spec) -> Rolling:
    return spec.strategy.rolling or Rolling()


def limits(spec: Spec) -> tuple[int, int, int]:
    """(max_surge, max_unavailable, largest batch), in instances. On an SSH fleet the spec counts hosts: each is
    ``instances_per_host`` instances, and no batch changes more than ``max_parallel_hosts`` hosts at once."""
    cfg = _cfg(spec)
    if isinstance(spec.platform, SshPlatform):
        per_host = spec.platform.instances_per_host
        return cfg.max_surge * per_host, cfg.max_unavailable * per_host, spec.platform.max_parallel_hosts * per_host
    return cfg.max_surge, cfg.max_unavailable, spec.platform.instances


def _plan(rp: RollingProgress, spec: Spec) -> RollingProgress:
    surge, _, largest = limits(spec)
    if rp.dst_in >= rp.target:
        return rp.model_copy(update={"stage": "trim" if rp.src_in > 0 else "done", "batch": 0})
    room = rp.target + surge - (rp.src_in + rp.dst_in)
    if room <= 0:
        return rp.model_copy(update={"stage": "shrink", "batch": 0})
    return rp.model_copy(update={"stage": "start", "batch": min(room, rp.target - rp.dst_in, largest)})


def _cut(rp: RollingProgress, spec: Spec) -> int:
    """How many ``src`` instances the current shrink/trim stage takes out of service."""
    if rp.stage == "shrink":
        _, unavailable, largest = limits(spec)
        return min(unavailable, largest, rp.src_in)
    if rp.dst_in >= rp.target:
        return rp.src_in
    return max(0, rp.src_in + rp.dst_in - rp.target)


def _route(rp: RollingProgress, src_in: int, dst_in: int) -> Route:
    total = src_in + dst_in
    w_dst = round(100 * dst_in / total) if total else 0
    shares = [Share(rp.dst, w_dst, dst_in), Share(rp.src, 100 - w_dst if total else 0, src_in)]
    return Route(tuple(s for s in shares if s.weight > 0))


def _weight_of_new(st: RolloutState, rp: RollingProgress) -> int:
    total = rp.src_in + rp.dst_in
    if not total:
        return 0
    share = round(100 * rp.dst_in / total)
    return share if rp.dst == st.version else 100 - share


def begin(st: RolloutState, spec: Spec, now: float) -> RolloutState:
    assert st.previous is not None
    n = spec.platform.instances
    rp = _plan(RollingProgress(src=st.previous, dst=st.version, target=n, src_in=n), spec)
    return st.model_copy(update={"phase": "roll", "rolling": rp, "phase_started": now, "routed": False})


def reverse(st: RolloutState, spec: Spec, reason: str, now: float, outcome: Status) -> RolloutState:
    """Roll back by rolling the other way; first stop new instances that never made it into the routes."""
    rp = st.rolling
    assert rp is not None
    back = RollingProgress(src=rp.dst, dst=rp.src, target=rp.target, src_in=rp.dst_in, dst_in=rp.src_in,
                           stage="clean", smoked=True)
    return st.model_copy(update={"phase": "roll_back", "rolling": back, "reason": reason, "outcome": outcome,
                                 "phase_started": now, "waiting": None, "paused": None, "no_data_since": None})


def next_action(st: RolloutState, spec: Spec, now: float) -> Action:
    rp = st.rolling
    assert rp is not None
    stage = rp.stage
    if stage in ("shrink", "trim"):
        return _route(rp, rp.src_in - _cut(rp, spec), rp.dst_in)
    if stage in ("stop", "clean"):
        return Stop(rp.src, rp.src_in)
    if stage == "start":
        return Start(rp.dst, rp.dst_in + rp.batch)
    # Forward, the batch's instances must all run (engine/instances.py); rolling back takes what runs.
    count = rp.dst_in + rp.batch if st.phase == "roll" else None
    if stage == "health":
        return Health(rp.dst, count)
    if stage == "smoke":
        return Smoke(rp.dst, count)
    if stage == "route":
        return _route(rp, rp.src_in, rp.dst_in + rp.batch)
    if stage == "pause":
        return tick(st, spec, now, st.phase_started + _cfg(spec).pause, rp.dst, rp.src)
    raise ValueError(f"rolling stage {stage!r} has no action")


def _after_batch(st: RolloutState, rp: RollingProgress, spec: Spec, now: float) -> RolloutState:
    pause = _cfg(spec).pause
    if st.phase == "roll" and pause > 0 and not st.promote_requested:
        rp = rp.model_copy(update={"stage": "pause"})
        return st.model_copy(update={"rolling": rp, "phase_started": now, "waiting": None, "paused": None,
                                     "no_data_since": None})
    return _advance(st, rp, spec, now)


def _advance(st: RolloutState, rp: RollingProgress, spec: Spec, now: float) -> RolloutState:
    rp = _plan(rp, spec)
    st = st.model_copy(update={"rolling": rp, "weight": _weight_of_new(st, rp), "waiting": None, "paused": None,
                               "no_data_since": None})
    if rp.stage == "done":
        if st.phase == "roll":
            return st.model_copy(update={"phase": "finish", "outcome": "promoted", "phase_started": now,
                                         "reason": f"promoted: all {rp.target} instances run {st.version}"})
        return st.model_copy(update={"phase": "finish", "outcome": st.outcome or "rolled_back",
                                     "phase_started": now, "reason": (st.reason or "rolled back") + st.schema_note()})
    return st


def apply(st: RolloutState, spec: Spec, action: Action, result: Result, now: float) -> Applied:
    """Health during the rollout first (engine/health.py): a trigger rolls back at once; then the batch logic."""
    if not isinstance(result, Observation) or result.interrupted:
        return _apply(st, spec, action, result, now)
    st, noted, trigger = health.track(st, spec, result)
    if trigger is not None and st.phase == "roll":
        return reverse(st, spec, trigger.message, now, "rolled_back"), [trigger]
    st, decisions = _apply(st, spec, action, result, now)
    return st, noted + decisions


def _apply(st: RolloutState, spec: Spec, action: Action, result: Result, now: float) -> Applied:
    rp = st.rolling
    assert rp is not None
    if isinstance(result, Observation):
        if result.interrupted:
            return st, []
        st = record_samples(st, spec, result)
        verdict = evaluate(spec.analysis.rules, st.samples, result.at, spec.analysis.interval)
        values: dict[str, object] = {"values": dict(verdict.latest)}
        if result.dead or verdict.breached:
            if result.dead:
                why = f"instance(s) of {st.version} died: {', '.join(result.dead)}"
            else:
                key, value = verdict.breached[0]
                rule = spec.analysis.rules[int(key.split(":")[0])]
                why = f"{rule.describe()} held (now {rule.show(value)})"
            return reverse(st, spec, why, now, "rolled_back"), [Decision("rollback", why, values)]
        assert isinstance(action, Analyze)
        if st.phase == "roll":  # a rollback rolls back whatever the evidence; only going forward needs it
            st, paused = track_no_data(st, spec, result, verdict, f"goes on replacing {rp.src} with {rp.dst} "
                                       "without analysing the remaining batches")
            if paused:
                return st, paused
        closing = st.promote_requested or result.at >= st.phase_started + _cfg(spec).pause
        if not closing:
            if st.paused is not None:
                return st, [Decision("analysis", "analysis while paused", values)]
            return wait(st, no_data_now(st, spec, result, verdict, BATCH_PROMISE), verdict.latest)
        outcome, why = (("pass", "") if st.promote_requested
                        else gate(spec.analysis.rules, result, action.whole, promise=BATCH_PROMISE))
        if outcome == "fail":
            why = f"batch {rp.dst_in}/{rp.target} failed: {why}"
            return reverse(st, spec, why, now, "rolled_back"), [Decision("rollback", why, values)]
        if st.paused is not None:  # nothing advances on its own; the batch's own evidence can still fail it
            return st, [Decision("analysis", "analysis while paused", values)]
        if outcome == "wait":
            return wait(st, why, verdict.latest)
        if result.held:
            return st.model_copy(update={"waiting": result.held}), [Decision("held", result.held, values)]
        return _advance(st, rp, spec, now), [Decision("analysis_passed", "batch analysis passed", values)]
    assert isinstance(result, Outcome)
    stage = rp.stage
    dead = st.phase == "roll" and bool(instances.deaths(result))
    if dead and rp.dst_in == 0 and stage in ("health", "smoke", "route") and instances.may_restart(st):
        # Before its first traffic: restart the dead instances once, and check the whole batch again.
        st, said = instances.restart(st, rp.dst, result)
        return st.model_copy(update={"rolling": rp.model_copy(update={"stage": "start", "smoked": False})}), [said]
    if instances.unreachable(result):  # an unknown host is waited for, whatever the stage
        return st.model_copy(update={"waiting": f"retrying: {result.reason}"}), [Decision("retry", result.reason)]
    if not result.ok:
        if stage in ("start", "health", "smoke") or (dead and stage in ("route", "shrink", "trim")):
            reason = instances.gave_up(st, result) if dead else result.reason
            why = f"{stage} failed for {rp.dst} in batch {rp.dst_in + 1}-{rp.dst_in + rp.batch}: {reason}"
            if st.phase == "roll_back":
                return (st.model_copy(update={"phase": "finish", "outcome": "failed", "reason": why}),
                        [Decision("failed", why, result.details)])
            if rp.dst_in == 0 and rp.src_in == rp.target:
                return (st.model_copy(update={"phase": "stop_new", "outcome": "aborted", "reason": why,
                                              "phase_started": now, "rolling": None}),
                        [Decision("abort", why, result.details)])
            return reverse(st, spec, why, now, "rolled_back"), [Decision("rollback", why, result.details)]
        return st.model_copy(update={"waiting": f"retrying: {result.reason}"}), [Decision("retry", result.reason)]
    if stage in ("shrink", "trim"):
        rp = rp.model_copy(update={"src_in": rp.src_in - _cut(rp, spec), "stage": "stop",
                                   "smoked": rp.smoked, "batch": rp.batch if stage == "trim" else -1})
        return st.model_copy(update={"rolling": rp, "weight": _weight_of_new(st, rp)}), []
    if stage == "stop":
        # batch == -1 marks a stop that made room before a batch; otherwise a batch just finished.
        if rp.batch == -1:
            return _advance(st, rp, spec, now), []
        return _after_batch(st, rp, spec, now), [Decision("batch", f"{rp.dst_in}/{rp.target} instances run {rp.dst}")]
    if stage == "clean":
        return _advance(st, rp, spec, now), []
    if stage == "start":
        return st.model_copy(update={"rolling": rp.model_copy(update={"stage": "health"})}), \
            instances.replaced(rp.dst, result)
    if stage == "health":
        nxt = "smoke" if not rp.smoked and rp.dst == st.version else "route"
        return st.model_copy(update={"rolling": rp.model_copy(update={"stage": nxt})}), []
    if stage == "smoke":
        return st.model_copy(update={"rolling": rp.model_copy(update={"stage": "route", "smoked": True})}), []
    if stage == "route":
        rp = rp.model_copy(update={"dst_in": rp.dst_in + rp.batch})
        st = st.model_copy(update={"rolling": rp, "weight": _weight_of_new(st, rp)})
        d = Decision("step", f"{rp.dst_in}/{rp.target} instances of {rp.dst} in service",
                     {"weight": st.weight})
        if rp.src_in + rp.dst_in > rp.target or (rp.dst_in >= rp.target and rp.src_in > 0):
            return st.model_copy(update={"rolling": rp.model_copy(update={"stage": "trim"})}), [d]
        return _after_batch(st, rp.model_copy(update={"batch": 0}), spec, now), [d]
    raise ValueError(f"unexpected result in rolling stage {stage!r}")
