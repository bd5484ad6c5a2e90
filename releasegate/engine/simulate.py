"""Run the engine against a simulated world: actions succeed at once, metrics come from a function of time.

``plan`` uses it to print exactly what ``deploy`` will do (the same state machine, not a second description of
it), and the tests use it to run hours of canary steps in milliseconds with failures injected where they like.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from releasegate.engine import decide
from releasegate.engine.analysis import rule_key
from releasegate.engine.state import (
    Action,
    Analyze,
    Decision,
    Finish,
    Health,
    Migrate,
    Observation,
    Outcome,
    RolloutState,
    Route,
    Smoke,
    Start,
    Stop,
)
from releasegate.spec.models import Rule, Spec

Metric = Callable[[float, str, int], float | None]
"""(seconds since start, metric name, the new version's weight) -> value, None for no data."""


def passing(rules: list[Rule]) -> Metric:
    """Values comfortably inside every rule's bounds."""
    def value(_t: float, metric: str, _w: int) -> float:
        for r in rules:
            if r.metric == metric:
                if r.max is not None:
                    return r.max / 2
                if r.min is not None:
                    return r.min * 2 + 1
        return 0.0
    return value


def _whole(spec: Spec, metric: Metric, action: Analyze, t: float, weight: int) -> dict[str, float | None] | None:
    """Each rule's metric over the whole step: the mean of its values sampled every interval (None: no data)."""
    if action.whole is None:
        return None
    interval = spec.analysis.interval
    n = max(1, round(action.whole / interval))
    out: dict[str, float | None] = {}
    for i, r in enumerate(spec.analysis.rules):
        seen = [v for k in range(n) if (v := metric(t - k * interval, r.metric, weight)) is not None]
        out[rule_key(i, r)] = sum(seen) / len(seen) if seen else None
    return out


@dataclass
class Trace:
    state: RolloutState
    steps: list[tuple[float, Action]] = field(default_factory=list)  # (seconds since start, action)
    weights: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    decisions: list[tuple[float, Decision]] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)


def simulate(spec: Spec, version: str, previous: str | None, *, metric: Metric | None = None,
             failing: frozenset[str] = frozenset(), commands: dict[float, str] | None = None,
             auto_promote: bool = False, held: Callable[[float], str | None] | None = None,
             t0: float = 1_000_000.0, max_actions: int = 200_000, paused_until: float = 0.0,
             roundtrip: bool = False) -> Trace:
    """Drive one rollout to its end. ``failing`` holds e.g. "health:2.0.0", "smoke:2.0.0" or "migrate";
    ``commands`` maps seconds-since-start to promote/abort/rollback; ``auto_promote`` answers manual steps
    with a promote; ``held`` says, by seconds since start, why traffic may not increase (a change freeze).

    A rollout paused for an operator, with no command left to come, ends the simulation (still running) once
    ``paused_until`` seconds have passed: only an operator would move it on. ``roundtrip`` persists and reloads
    the state before every action, as a controller killed and resumed there would."""
    metric = metric or passing(spec.analysis.rules)
    pending = dict(commands or {})
    now = t0
    st = decide.new_rollout("simulated", spec, version, previous, now)
    trace = Trace(st, running={previous: spec.platform.instances} if previous else {})
    for _ in range(max_actions):
        if roundtrip:
            st = RolloutState.model_validate_json(st.model_dump_json())
        for at in sorted(pending):
            if now - t0 >= at:
                st, _ = decide.command(st, spec, pending.pop(at), now)
        if auto_promote and st.paused is None and st.waiting and "promote" in st.waiting:
            st, _ = decide.command(st, spec, "promote", now)
        if st.paused is not None and not pending and now - t0 >= paused_until:
            break
        action = decide.next_action(st, spec, now)
        trace.steps.append((now - t0, action))
        result: Outcome | Observation = Outcome(True)
        if isinstance(action, Start):
            trace.running[action.version] = max(trace.running.get(action.version, 0), action.count)
        elif isinstance(action, Health | Smoke):
            kind = "health" if isinstance(action, Health) else "smoke"
            result = Outcome(f"{kind}:{action.version}" not in failing, reason=f"{kind} failed (simulated)")
        elif isinstance(action, Migrate):
            result = Outcome("migrate" not in failing, reason="migration failed (simulated)",
                             details={"recorded": ["001.sql"]})
        elif isinstance(action, Route):
            trace.weights.append((now - t0, {s.version: s.weight for s in action.shares}))
        elif isinstance(action, Stop):
            trace.running[action.version] = min(trace.running.get(action.version, 0), action.keep)
        elif isinstance(action, Analyze):
            upcoming = [t0 + at for at in pending if t0 + at > now]
            if upcoming and min(upcoming) < action.at:
                now = min(upcoming)
                result = Observation(at=now, interrupted=True)
            else:
                now = action.at
                w = trace.weights[-1][1].get(action.version, 0) if trace.weights else 0
                result = Observation(at=now, values={rule_key(i, r): metric(now - t0, r.metric, w)
                                                     for i, r in enumerate(spec.analysis.rules)},
                                     whole=_whole(spec, metric, action, now - t0, w),
                                     held=held(now - t0) if held else None)
        st, decisions = decide.apply(st, spec, action, result, now)
        trace.decisions += [(now - t0, d) for d in decisions]
        if isinstance(action, Finish):
            trace.state = st
            return trace
    else:
        trace.state = st
        raise RuntimeError(f"the simulated rollout did not finish within {max_actions} actions "
                           f"(phase {st.phase}, {st.waiting or 'no wait reason'})")
    trace.state = st
    return trace
