"""The rollout state machine: ``next_action(state)`` and ``apply(state, action, result)``, both pure.

The controller loop is: compute the next action from the persisted state, record the intent, perform it (every
action is idempotent), fold the result back in with ``apply`` and persist. A controller killed at any point
recomputes the same action from the same state on restart, so resuming behaves like never having stopped.

Phases (canary and blue-green; a first deploy skips prepare and steps):
  prepare -> prepare_health -> start -> [migrate] -> health -> smoke -> step[i]... -> promote -> watch -> finish
  a member of a `switch: together` release group: ... -> smoke -> held -> (the group's promote) -> promote -> ...
  a canary with `analysis.baseline` (engine/baseline.py): ... -> smoke -> baseline -> baseline_health -> step[i]...,
  and the baseline is stopped at the start of the watch or, in the finish phase, before Finish
  any failure before traffic -> abort -> stop_new -> finish(aborted)
  a breach, a dead instance or `rollback` -> rollback (staircase) -> stop_new -> finish(rolled_back)
  failed health checks during the rollout (engine/health.py) -> rollback straight to 0 %
Migrations run once the new version has started and before its checks, which need its schema; they are
backward compatible by rule, so the running version is unaffected.
Rolling migrates before its first batch, replaces instances in batches (engine/rolling.py) and rolls back by
rolling the other way.
The staircase is engine/staircase.py; waiting for evidence and pausing for an operator, engine/pause.py; what an
analysis interval does, engine/observe.py; the roads to a rollback or to the finish, engine/exits.py.
"""

from __future__ import annotations

from releasegate.engine import baseline, hosts, instances, rolling, staircase
from releasegate.engine.analysis import tick
from releasegate.engine.exits import ending, start_rollback
from releasegate.engine.observe import observe
from releasegate.engine.phase import Applied
from releasegate.engine.phase import enter as _to
from releasegate.engine.phase import split as _split
from releasegate.engine.state import (
    Action,
    Analyze,
    Decision,
    Finish,
    Health,
    Hold,
    Migrate,
    Observation,
    Outcome,
    Result,
    RolloutState,
    Route,
    Smoke,
    Start,
    Status,
    Stop,
)
from releasegate.spec.models import Spec


def new_rollout(rollout_id: str, spec: Spec, version: str, previous: str | None, now: float) -> RolloutState:
    strategy = spec.strategy.kind if previous is not None else "initial"
    return RolloutState(id=rollout_id, service=spec.service, version=version, previous=previous,
                        strategy=strategy, phase="prepare" if previous is not None else "start",
                        phase_started=now, created_at=now, updated_at=now)


def next_action(st: RolloutState, spec: Spec, now: float) -> Action:
    """What to do next; deterministic in (state, spec, now)."""
    p = st.phase
    if (own := baseline.next_action(st, spec)) is not None:
        return own  # start, check or remove the baseline beside the canary (engine/baseline.py)
    if p == "finish":
        return Finish(st.outcome or "failed", st.reason or "")
    if p == "prepare":
        assert st.previous is not None
        return Start(st.previous, spec.platform.instances)
    if p == "prepare_health":
        assert st.previous is not None
        return Health(st.previous)
    if p in ("roll", "roll_back"):
        return rolling.next_action(st, spec, now)
    if p == "start":
        return Start(st.version, hosts.first(st, spec))
    if p == "health":
        return Health(st.version, hosts.first(st, spec))
    if p == "smoke":
        return Smoke(st.version, hosts.first(st, spec))
    if p == "migrate":
        return Migrate(st.allow_breaking_migration)
    if p == "held":
        return Hold(st.version, hosts.first(st, spec))
    if p in ("step", "promote") and (growing := hosts.grow(st, spec)) is not None:
        return growing  # a canary on a fleet: more hosts before more traffic
    if p == "step":
        step = spec.strategy.steps[st.step]
        if not st.routed:
            return _split(st, step.weight, hosts.exposure(st, spec, step.weight))
        return tick(st, spec, now, None if step.pause is None else st.phase_started + step.pause, st.version,
                    st.previous)
    if p == "promote":
        return _split(st, 100)
    if p == "watch":
        return tick(st, spec, now, st.phase_started + spec.analysis.post_promotion, st.version, st.previous)
    if p == "rollback":
        return staircase.next_action(st, spec, now)
    if p == "abort":
        return _split(st, 0) if st.weight > 0 else Stop(st.version, 0)
    if p == "stop_new":
        return Stop(st.version, 0)
    raise ValueError(f"rollout {st.id} is in an unknown phase {p!r}")


def apply(st: RolloutState, spec: Spec, action: Action, result: Result, now: float) -> Applied:
    """Fold the result of ``action`` into the state; returns the new state and the decisions taken."""
    st = st.model_copy(update={"updated_at": now})
    if isinstance(action, Finish):
        done = st.model_copy(update={"status": action.status, "finished_at": now, "waiting": None})
        return done, [Decision(action.status, action.reason)]
    if st.phase in ("roll", "roll_back"):
        return rolling.apply(st, spec, action, result, now)
    if isinstance(result, Observation):
        assert isinstance(action, Analyze)
        return observe(st, spec, action, result, now)
    assert isinstance(result, Outcome)
    return _outcome(st, spec, action, result, now)


def _outcome(st: RolloutState, spec: Spec, action: Action, r: Outcome, now: float) -> Applied:
    p = st.phase
    if baseline.is_removal(st, action):
        return baseline.removed(st, r)
    if p in ("health", "smoke", "held", "step", "promote") and instances.deaths(r):
        return _died(st, spec, r, now)
    if instances.unreachable(r):
        return st.model_copy(update={"waiting": f"retrying: {r.reason}"}), [Decision("retry", r.reason)]
    if p in ("step", "promote") and isinstance(action, Start | Health):
        return _grown(st, spec, action, r, now)
    if not r.ok:
        if p in ("prepare", "prepare_health"):
            why = f"the running version {st.previous} is not healthy, nothing was changed: {r.reason}"
            return ending(st, "aborted", why, now), [Decision("aborted", why, r.details)]
        if p in baseline.PHASES:
            why = baseline.failed(st, r)
            return _to(st, "abort", now, reason=why, outcome="aborted"), [Decision("abort", why, r.details)]
        if p in ("start", "health", "smoke", "migrate", "held"):
            why = f"{p} failed for {st.version}, no user traffic reached it: {r.reason}"
            return _to(st, "abort", now, reason=why, outcome="aborted"), [Decision("abort", why, r.details)]
        # A provider failed while moving traffic or stopping: the action is retried; the state is unchanged.
        return st.model_copy(update={"waiting": f"retrying: {r.reason}"}), [Decision("retry", r.reason)]
    if p == "prepare":
        return _to(st, "prepare_health", now), instances.replaced(st.previous, r)
    if p == "prepare_health":
        if st.strategy == "rolling":
            if spec.migrations is not None:
                return _to(st, "migrate", now), []
            return rolling.begin(st, spec, now), [Decision("started", f"rolling {st.previous} -> {st.version}")]
        return _to(st, "start", now), []
    if p == "start":
        nxt = "migrate" if spec.migrations is not None and not st.migrated else "health"  # once, even after a restart
        again = " again" if st.restarts else ""
        return _to(st, nxt, now), [Decision("started", f"{st.version} started{again}", r.details)]
    if p == "health":
        return _to(st, "smoke", now), [Decision("healthy", f"{st.version} passed its health check", r.details)]
    if p == "smoke":
        st = st.model_copy(update={"grown": hosts.first(st, spec)})
        d = Decision("smoke_passed", f"{st.version} passed its smoke tests", r.details)
        if spec.migrations is not None and not st.migrated:  # a state saved by a release that migrated last
            return _to(st, "migrate", now), [d]
        if st.hold and not st.promote_requested:
            why = f"held: {st.version} is ready, no traffic until its release group switches every member at once"
            return _to(st, "held", now, waiting=why), [d, Decision("held", why)]
        if baseline.wanted(st, spec):
            return baseline.begin(st, now), [d]
        return _first_traffic(st, spec, now), [d]
    if p == "baseline":
        return _to(st, "baseline_health", now), [baseline.started(st, r)]
    if p == "baseline_health":
        return _first_traffic(st, spec, now), [baseline.started(st, r)]
    if p == "held":  # still ready; the group (or an operator's promote) ends the hold
        return st, []
    if p == "migrate":
        d = Decision("migrated", "database migrations applied before any traffic", r.details)
        recorded = r.details.get("recorded")
        applied = [str(m) for m in recorded] if isinstance(recorded, list) else []
        st = st.model_copy(update={"migrations_applied": applied, "migrated": True})
        if st.strategy == "rolling":
            return rolling.begin(st, spec, now), [d, Decision("started", f"rolling {st.previous} -> {st.version}")]
        return _to(st, "health", now), [d]
    if p == "step":
        w = spec.strategy.steps[st.step].weight
        return st.model_copy(update={"routed": True, "weight": w, "phase_started": now}), [
            Decision("step", f"step {st.step + 1}/{len(spec.strategy.steps)}: {st.version} at {w}%", {"weight": w})]
    if p == "promote":
        d = Decision("switched", f"{st.version} at 100%", {"weight": 100})
        st = st.model_copy(update={"weight": 100})
        if st.previous is not None and spec.analysis.post_promotion > 0:
            return _to(st, "watch", now), [d]
        return ending(st, "promoted", f"promoted: {st.version} serves 100%", now), [d]
    if p == "rollback":
        return staircase.routed(st, spec, now)
    if p == "abort":
        if isinstance(action, Route):
            return st.model_copy(update={"weight": 0}), [Decision("rollback_step", f"{st.version} at 0%")]
        return ending(st, "aborted", st.reason or "aborted", now), [Decision("stopped", f"{st.version} stopped")]
    if p == "stop_new":
        return (ending(st, st.outcome or "rolled_back", st.reason or "rolled back", now),
                [Decision("stopped", f"{st.version} stopped")])
    raise ValueError(f"unexpected result in phase {p!r}")


def _grown(st: RolloutState, spec: Spec, action: Start | Health, r: Outcome, now: float) -> Applied:
    """A canary on a fleet brought up the instances its next traffic increase needs (engine/hosts.py): started, then
    health-checked; a start that failed is retried, new instances that fail their health check roll back."""
    if isinstance(action, Start):
        if not r.ok:
            return st.model_copy(update={"waiting": f"retrying: {r.reason}"}), [Decision("retry", r.reason)]
        return st.model_copy(update={"growing": True}), [
            Decision("started", f"{st.version} on more hosts: {action.count} instance(s)", r.details)]
    if not r.ok:
        why = f"health failed for {st.version} on the hosts added before more traffic: {r.reason}"
        return start_rollback(st, spec, why, now, immediate=True), [Decision("rollback", why, r.details)]
    return st.model_copy(update={"growing": False, "grown": action.count}), [
        Decision("healthy", f"{action.count} instance(s) of {st.version} passed their health check", r.details)]


def _died(st: RolloutState, spec: Spec, r: Outcome, now: float) -> Applied:
    """An instance of the new version was found dead (engine/instances.py): before its first traffic, restart it
    once, then abort; after, roll back at once, as a death noticed by the analysis does."""
    if st.weight == 0:
        if instances.may_restart(st):
            st, said = instances.restart(st, st.version, r)
            return _to(st, "start", now), [said]
        why = f"{st.version} lost an instance before its first traffic, no user traffic reached it: " \
              f"{instances.gave_up(st, r)}"
        return _to(st, "abort", now, reason=why, outcome="aborted"), [Decision("abort", why, r.details)]
    why = f"instance(s) of {st.version} died: {r.reason}"
    return start_rollback(st, spec, why, now, immediate=True), [Decision("rollback", why, r.details)]


def _first_traffic(st: RolloutState, spec: Spec, now: float) -> RolloutState:
    if st.strategy == "initial" or st.promote_requested or not spec.strategy.steps:
        return _to(st, "promote", now)
    return _to(st, "step", now, step=0)


def command(st: RolloutState, spec: Spec, kind: str, now: float) -> tuple[RolloutState, str | None]:
    """Apply an operator command; returns the new state and an error message when the command is refused.

    promote: in a step (paused for no data or not), to 100 % and the watch; in the watch, ends it promoted; while
    the staircase holds at a stair, promotes again (100 % and the watch); in a rolling rollout or before traffic,
    skips the remaining analysis pauses. Refused while traffic is going down (a stair not yet decided, abort).
    abort/rollback: before traffic, abort; after, straight to 0 % (a staircase in progress keeps why it started).
    """
    if not st.active or st.phase == "finish":
        return st, f"rollout {st.id} has already finished ({st.status})"
    if kind == "promote":
        if st.phase == "rollback" and st.paused is not None and st.paused.kind == "stair":
            return staircase.promote_again(st, now), None
        if st.phase == "rollback":
            return st, (f"cannot promote: {st.service} is rolling back ({st.reason}); promote is accepted once the "
                        "staircase holds at a stair where the errors stopped")
        if st.phase in ("abort", "stop_new", "roll_back"):
            return st, f"cannot promote: {st.service} is rolling back ({st.reason})"
        if st.phase in ("step", "held"):
            return _to(st, "promote", now), None
        if st.phase == "watch":
            return ending(st, "promoted", f"promoted: {st.version} serves 100% (watch ended by operator)", now), None
        return st.model_copy(update={"promote_requested": True, "paused": None, "no_data_since": None,
                                     "waiting": None}), None
    if kind in ("abort", "rollback"):
        if st.phase in ("abort", "stop_new", "roll_back") or (st.phase == "rollback" and st.staircase == [0]):
            return st, None  # already going back
        outcome: Status = "aborted" if kind == "abort" else "rolled_back"
        label = "aborted by operator" if kind == "abort" else "rolled back by operator"
        if st.phase in ("prepare", "prepare_health", "start", "health", "smoke", "migrate", "held",
                        *baseline.PHASES):
            return _to(st, "abort", now, reason=label, outcome="aborted"), None
        if st.phase == "rollback" and st.reason:
            label = f"{st.reason}; {label} at {st.weight}%"
        return start_rollback(st, spec, label, now, immediate=True, outcome=outcome), None
    return st, f"unknown command {kind!r}"
