"""The rollback staircase as the MegaCity release guide writes it (section 5.1): 100 -> 50 % at once, down to the
next stair only if errors persist for that stair's wait, 0 % declares an incident.

On a breach at weight W the new version goes at once to the first stair below W. Each stair is analysed for its
``wait``; then every rule is measured over the whole stair (the window since traffic was cut to it):

- **errors persist** when some rule is beyond its bound over the stair, or has no data there (no evidence of
  recovery is not recovery): down to the next stair, the safe direction;
- otherwise the errors stopped: **hold** at the stair, paused for an operator. ``promote`` promotes again (100 %
  and the post-promotion watch), ``rollback`` goes to 0 %. While holding, analysis goes on: a rule that breaches
  again resumes the staircase at the next stair, a dead instance goes to 0 %.

Straight to 0 % at once, without waiting out the stairs:
- the new version's error rate is above ``rollback.immediate_error_rate`` (default 50 %): at the breach (the mean of
  the evaluations in the breach window, or the whole step's error rate when a step's own evidence failed it) or
  over a stair (once the stair holds ``MIN_EVIDENCE`` evaluations);
- the breaching metric is clearly rising: over the stair so far (at least ``MIN_EVIDENCE`` evaluations) it is
  ``rollback.rising`` (default 50 %) worse, relative, than the value that started the rollback. A small move
  (0.3007 -> 0.3021) is noise, not a rise;
- an instance of the new version died.

Reaching 0 % after a staircase started (an automatic rollback from a weight above the lowest stair) declares an
incident, whatever the tier. ``rollback.mode: immediate`` (the default for ``tier: critical``) skips all of this.
"""

from __future__ import annotations

import dataclasses

from releasegate.durations import format_duration
from releasegate.engine.analysis import Verdict, rule_key, span_text, tick, window_mean
from releasegate.engine.pause import pause
from releasegate.engine.phase import Applied, enter, split
from releasegate.engine.state import Action, Decision, Observation, RolloutState, Status
from releasegate.spec.models import Rule, Spec

MIN_EVIDENCE = 3
"""Evaluations a stair needs before its window may cut the staircase short: never one noisy interval."""


def _show(rule: Rule, value: float) -> str:
    return rule.show(value)


def _pct(value: float) -> str:
    return f"{value * 100:.3g}%"


def _rule(spec: Spec, key: str) -> Rule:
    return spec.analysis.rules[int(key.split(":")[0])]


def start(st: RolloutState, spec: Spec, reason: str, now: float, *, immediate: bool = False,
          rule: str | None = None, value: float | None = None, outcome: Status = "rolled_back",
          escalated: bool = False) -> RolloutState:
    """Enter the rollback: down the stairs below the current weight, or straight to 0 %. ``escalated``: the
    staircase applied but was skipped (a version failing far beyond its threshold), so 0 % is still an incident."""
    planned = [w for w in spec.rollback.weights if w < st.weight] or [0]
    stairs = [0] if immediate or spec.rollback_mode == "immediate" else planned
    started = st.staircase_from
    if started is None and (stairs[0] > 0 or (escalated and planned[0] > 0)):
        started = st.weight
    return enter(st, "rollback", now, staircase=stairs, reason=reason, outcome=outcome, staircase_from=started,
                 breach_rule=rule if rule is not None else st.breach_rule,
                 breach_value=value if value is not None else st.breach_value)


def _error_rate(spec: Spec, values: dict[str, float | None]) -> float | None:
    """The new version's error rate in ``values`` (the highest of the error_rate rules'), None without one."""
    seen = [v for i, r in enumerate(spec.analysis.rules) if r.metric == "error_rate"
            and (v := values.get(rule_key(i, r))) is not None]
    return max(seen) if seen else None


def begin(st: RolloutState, spec: Spec, why: str, now: float, *, rule: str | None, value: float | None,
          error_rate: float | None, data: dict[str, object]) -> Applied:
    """An automatic rollback after a breach: the staircase, unless the version fails far beyond its threshold."""
    limit = spec.rollback.immediate_error_rate
    planned = [w for w in spec.rollback.weights if w < st.weight] or [0]
    straight = (spec.rollback_mode == "staircase" and planned[0] > 0 and limit is not None
                and error_rate is not None and error_rate > limit)
    if straight and limit is not None and error_rate is not None:
        why += (f"; error rate {_pct(error_rate)} is above rollback.immediate_error_rate {_pct(limit)}: "
                "straight to 0%")
    new = start(st, spec, why, now, immediate=straight, rule=rule, value=value, escalated=straight)
    more = {"error_rate": error_rate, "immediate_error_rate": limit} if straight else {}
    return new, [Decision("rollback", why, {**data, "rule": rule, "breach_value": value, "weight": st.weight,
                                            "stairs": new.staircase, **more})]


def breach(st: RolloutState, spec: Spec, verdict: Verdict, at: float, now: float, note: str = "") -> Applied:
    """A rule held beyond its bound for its whole ``for`` window. The value that started the rollback is the mean
    of the evaluations in that window (what later stairs are compared with), not the last noisy interval."""
    key, latest = verdict.breached[0]
    rule = _rule(spec, key)
    since = at - rule.for_
    value = window_mean(st.samples.get(key, []), since)
    rates = {k: window_mean(st.samples.get(k, []), since) for k in st.samples}
    why = f"{rule.describe()} held (now {_show(rule, latest)}) at {st.weight}%{note}"
    return begin(st, spec, why, now, rule=key, value=value if value is not None else latest,
                 error_rate=_error_rate(spec, rates), data={"values": dict(verdict.latest)})


def failed_step(st: RolloutState, spec: Spec, why: str, obs: Observation, now: float) -> Applied:
    """A step's (or the watch's) own evidence failed it: the failing rule's value over the step starts the rollback."""
    whole = obs.whole or {}
    key = next((rule_key(i, r) for i, r in enumerate(spec.analysis.rules)
                if (v := whole.get(rule_key(i, r))) is not None and r.broken_by(v)), None)
    data: dict[str, object] = {"values": dict(whole), "latest": dict(obs.values), "step": obs.whole}  # what failed it
    return begin(st, spec, why, now, rule=key, value=whole.get(key) if key else None,
                 error_rate=_error_rate(spec, whole), data=data)


def next_action(st: RolloutState, spec: Spec, now: float) -> Action:
    """Route to the stair, then analyse it; every evaluation on a running stair also measures the stair so far."""
    if not st.routed:
        return split(st, st.staircase[0])
    if st.paused is not None:
        return tick(st, spec, now, None, st.version, st.previous)
    deadline = st.phase_started + spec.rollback.wait_at(st.weight)
    action = tick(st, spec, now, deadline, st.version, st.previous)
    return dataclasses.replace(action, whole=max(action.at - st.phase_started, spec.analysis.interval))


def routed(st: RolloutState, spec: Spec, now: float) -> Applied:
    """Traffic is at the stair; at 0 % the new version is stopped, and a staircase that got there is an incident."""
    w, before = st.staircase[0], st.weight
    st = st.model_copy(update={"routed": True, "weight": w, "phase_started": now, "no_data_since": None})
    if w > 0:
        nxt = st.staircase[1] if len(st.staircase) > 1 else 0
        wait = format_duration(spec.rollback.wait_at(w))
        return st, [Decision("rollback_step", f"rolling back: {st.version} at {w}%; down to {nxt}% if errors "
                                              f"persist for {wait}", {"weight": w, "wait": wait})]
    said = [Decision("rollback_step", f"rolling back: {st.version} at 0%", {"weight": 0})]
    if st.staircase_from is not None:
        how = (f"after the staircase from {st.staircase_from}%" if before < st.staircase_from
               else f"straight from {st.staircase_from}% (the staircase cut short)")
        said.append(Decision("incident", f"incident: {st.version} rolled back to 0% {how}: {st.reason}",
                             {"weight": 0, "from": st.staircase_from, "reason": st.reason}))
    return enter(st, "stop_new", now), said


def _to_zero(st: RolloutState, spec: Spec, why: str, now: float, data: dict[str, object]) -> Applied:
    new = start(st, spec, st.reason or why, now, immediate=True, outcome=st.outcome or "rolled_back")
    return new, [Decision("rollback", why, data)]


def observe(st: RolloutState, spec: Spec, obs: Observation, verdict: Verdict, now: float) -> Applied:
    """One evaluation during the rollback: cut short to 0 %, step down, hold, or keep watching the stair."""
    values: dict[str, object] = {"values": dict(verdict.latest)}
    if obs.dead:
        return _to_zero(st, spec, f"instance(s) of {st.version} died at {st.weight}%: {', '.join(obs.dead)}; "
                                  "straight to 0%", now, values)
    if st.paused is not None:
        if verdict.breached:
            return breach(st, spec, verdict, obs.at, now, note=" while holding at the stair")
        return st, [Decision("analysis", f"analysis while holding at {st.weight}%", values)]
    interval = spec.analysis.interval
    span = obs.at - st.phase_started
    deadline = st.phase_started + spec.rollback.wait_at(st.weight)
    whole = obs.whole or {}
    shown = span_text(span)
    if span >= MIN_EVIDENCE * interval - 1e-6 or obs.at >= deadline:
        cut = _clearly_worse(st, spec, whole, shown)
        if cut is not None:
            why, data = cut
            return _to_zero(st, spec, why, now, {**values, **data, "window": span})
    if obs.at < deadline:
        return st, [Decision("analysis", "analysis during rollback", values)]
    persisting, missing = [], []
    for i, rule in enumerate(spec.analysis.rules):
        value = whole.get(rule_key(i, rule)) if obs.whole is not None else None
        if value is None:
            missing.append(rule.metric)
        elif rule.broken_by(value):
            persisting.append(f"{rule.metric} {_show(rule, value)} (rule: {rule.describe()})")
    data = {**values, "stair": obs.whole, "window": span, "weight": st.weight}
    if persisting or missing:
        nxt = st.staircase[1:] or [0]
        found = "; ".join(persisting + ([f"no data for {', '.join(missing)}: no evidence of recovery"]
                                        if missing else []))
        why = f"errors persist at {st.weight}% over the stair ({shown}): {found}; down to {nxt[0]}%"
        return enter(st, "rollback", now, staircase=nxt), [Decision("errors_persist", why, data)]
    summary = ", ".join(f"{r.metric} {_show(r, v)}" for i, r in enumerate(spec.analysis.rules)
                        if (v := whole.get(rule_key(i, r))) is not None)
    reason = (f"paused at {st.weight}%: errors stopped over the stair ({shown}: {summary or 'no rules'}); "
              f"`releasegate promote {st.service}` promotes {st.version} to 100% again and watches it; "
              f"`releasegate rollback {st.service}` takes it to 0%")
    return pause(st, "stair", reason, obs.at, data)


def _clearly_worse(st: RolloutState, spec: Spec, whole: dict[str, float | None],
                   span: str) -> tuple[str, dict[str, object]] | None:
    """Over the stair so far: an error rate far beyond any threshold, or the breaching metric clearly rising."""
    limit = spec.rollback.immediate_error_rate
    rate = _error_rate(spec, whole)
    if limit is not None and rate is not None and rate > limit:
        return (f"error rate {_pct(rate)} over the stair ({span}) at {st.weight}% is above "
                f"rollback.immediate_error_rate {_pct(limit)}: straight to 0%",
                {"error_rate": rate, "threshold": limit})
    rising, key, before = spec.rollback.rising, st.breach_rule, st.breach_value
    if rising is None or key is None or before is None or st.staircase[0] == 0:
        return None
    now_value = whole.get(key)
    if now_value is None:
        return None
    rule = _rule(spec, key)
    if rule.max is not None and before > rule.max:
        worse, word, bar = now_value >= before * (1 + rising), "rose", before * (1 + rising)
    elif rule.min is not None and before < rule.min:
        worse, word, bar = now_value <= before * (1 - rising), "fell", before * (1 - rising)
    else:
        return None
    if not worse:
        return None
    return (f"{rule.metric} {word} from {_show(rule, before)} to {_show(rule, now_value)} over the stair ({span}), "
            f"beyond rollback.rising {_pct(rising)} (limit {_show(rule, bar)}): straight to 0%",
            {"rule": key, "before": before, "now": now_value, "threshold": rising, "limit": bar})


def promote_again(st: RolloutState, now: float) -> RolloutState:
    """`promote` while holding at a stair: back to 100 % and the post-promotion watch, as a new promotion."""
    return enter(st, "promote", now, staircase=[], breach_rule=None, breach_value=None, staircase_from=None,
                 reason=None, outcome=None)
