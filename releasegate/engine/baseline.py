"""A baseline beside the canary (``analysis.baseline: true``): the previous version's artifact, started fresh with
the canary and given the canary's weight at every step, so the two are compared under the same load, cache state
and time (instances that ran for days are not a fair comparison for ones started a minute ago).

The life of a baseline, all in the engine (pure) and persisted in the state, so a resumed controller does the same:

- after the canary passed its smoke tests and before its first traffic, the baseline is started (``baseline``
  phase, ``Start``) with the canary's instance count (on an SSH fleet, where the canary grows with its steps: its
  count at the largest step, engine/hosts.py ``for_baseline``), then health-checked (``baseline_health``). Either
  failing aborts the rollout: no user traffic reached the canary or the baseline yet;
- during the steps it is routed as its own entry (``<previous>+baseline``) with the canary's weight (on a fleet, to
  as many of its instances as the canary has at that step), taken from the previous version's share: 5/5/90,
  20/20/60, 50/50/0. Above 50 % there is not enough left of the previous version
  to match the canary: the baseline gets what is left (75/25/0);
- outside the steps it gets no traffic: at the promotion the canary takes 100 %, and on a rollback the staircase
  moves the baseline's share back to the previous version together with the canary's first stair;
- it is stopped when the rollout ends, whatever the outcome (``Stop`` before ``Finish``), or at the start of the
  post-promotion watch, where it has no traffic left to compare. ``baseline_up`` says its instances may still run.

A rollout that is not a canary with steps (a first deploy, a member of a `switch: together` group, a canary with no
steps or promoted before its first step) starts no baseline.
"""

from __future__ import annotations

from releasegate.engine import hosts
from releasegate.engine.pause import pause
from releasegate.engine.phase import enter
from releasegate.engine.state import Action, Decision, Health, Outcome, RolloutState, Start, Stop
from releasegate.spec.common import baseline_name
from releasegate.spec.models import Spec

PHASES = ("baseline", "baseline_health")


def wanted(st: RolloutState, spec: Spec) -> bool:
    """Whether this rollout starts a baseline before its first traffic."""
    return (spec.analysis.baseline and st.strategy == "canary" and st.previous is not None
            and bool(spec.strategy.steps) and not st.hold and not st.promote_requested)


def begin(st: RolloutState, now: float) -> RolloutState:
    """Enter the ``baseline`` phase; the name and ``baseline_up`` are saved before any instance starts, so a
    controller killed while starting it still stops what it started."""
    assert st.previous is not None
    return enter(st, "baseline", now, baseline=baseline_name(st.previous), baseline_up=True)


def next_action(st: RolloutState, spec: Spec) -> Action | None:
    """The baseline's own action in this phase, if any: start it, check it, or remove it once it has no use."""
    if st.baseline is None:
        return None
    if st.phase == "baseline":
        return Start(st.baseline, hosts.for_baseline(st, spec))
    if st.phase == "baseline_health":
        return Health(st.baseline, hosts.for_baseline(st, spec))
    if st.baseline_up and (st.phase in ("watch", "finish") or (st.baseline_lost and st.routed)):
        return Stop(st.baseline, 0)  # a lost one once its traffic is back on the previous version (``lost``)
    return None


def lost(st: RolloutState, spec: Spec, dead: tuple[str, ...], at: float) -> tuple[RolloutState, list[Decision]]:
    """An instance of the baseline died during the steps, or failed ``health.failure_threshold`` checks in a row
    (``dead`` says which and why; releasegate/observing.py). Its users must not keep getting errors, and a judge must
    not compare the canary with a baseline that fails for its own reasons (a dead baseline's 502s would make any
    canary look better): the baseline's share goes back to the previous version (the step is routed again and
    starts over), the baseline is stopped, and a judged rollout pauses for an operator."""
    why = (f"baseline {st.baseline} lost instance(s) {', '.join(dead)}: its traffic goes back to {st.previous} and "
           "it is stopped")
    st = st.model_copy(update={"baseline_lost": True, "routed": False})
    decisions = [Decision("baseline_lost", why, {"dead": list(dead)})]
    if spec.analysis.judge is not None and st.paused is None and not st.promote_requested:
        reason = (f"paused at {st.weight}%: {why}; the judge has no fair comparison left. "
                  f"`releasegate promote {st.service}` goes on without the judge's evidence, `releasegate "
                  f"rollback {st.service}` takes {st.version} to 0%")
        st, paused = pause(st, "judge", reason, at, {"dead": list(dead)})
        decisions += paused
    return st, decisions


def is_removal(st: RolloutState, action: Action) -> bool:
    return isinstance(action, Stop) and st.baseline is not None and action.version == st.baseline


def removed(st: RolloutState, r: Outcome) -> tuple[RolloutState, list[Decision]]:
    """The baseline's instances are stopped (or the stop is retried, the state unchanged)."""
    if not r.ok:
        return st.model_copy(update={"waiting": f"retrying: {r.reason}"}), [Decision("retry", r.reason)]
    return st.model_copy(update={"baseline_up": False, "waiting": None}), [
        Decision("baseline_stopped", f"baseline {st.baseline} stopped", r.details)]


def failed(st: RolloutState, r: Outcome) -> str:
    """Why the rollout aborts when its baseline could not start or is not healthy."""
    what = "start" if st.phase == "baseline" else "pass its health check"
    return (f"the baseline {st.baseline} (the previous version {st.previous}) did not {what}, no user traffic "
            f"reached {st.version}: {r.reason}")


def started(st: RolloutState, r: Outcome) -> Decision:
    if st.phase == "baseline":
        return Decision("baseline_started", f"baseline {st.baseline} started beside {st.version} (the artifact "
                        f"of {st.previous})", r.details)
    return Decision("baseline_healthy", f"baseline {st.baseline} passed its health check", r.details)
