"""Threshold analysis: does a rule's condition hold for its whole ``for`` window, and is there evidence at all?

Each sample covers the interval [start, at]. A rule breaches only when an unbroken run of samples, all with data
and all beyond the bound, reaches back to ``now - for``. A missing value (no traffic, unreachable source) breaks
the run and makes the rule inconclusive: inconclusive never breaches and never lets a rollout advance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from releasegate.durations import format_duration
from releasegate.engine.state import Analyze, Observation, RolloutState, Sample
from releasegate.providers.base import AtLeast
from releasegate.spec.models import Rule, Spec


def rule_key(index: int, rule: Rule) -> str:
    return f"{index}:{rule.metric}"


@dataclass(frozen=True)
class Verdict:
    breached: list[tuple[str, float]] = field(default_factory=list)  # (rule key, latest value)
    inconclusive: list[str] = field(default_factory=list)  # rule keys without data in the latest sample
    latest: dict[str, float | None] = field(default_factory=dict)

    @property
    def conclusive(self) -> bool:
        return not self.inconclusive

    @property
    def healthy(self) -> bool:
        return self.conclusive and not self.breached


def _held(rule: Rule, samples: list[Sample], now: float, interval: float) -> bool:
    """True when the bound was broken in every sample back to ``now - for`` without a gap."""
    since = now - rule.for_
    gap = interval * 0.5 + 1e-6
    later_start: float | None = None
    for s in reversed(samples):
        if s.value is None or not rule.broken_by(s.value):
            return False
        if later_start is not None and s.at + gap < later_start:
            return False  # a hole in the evidence (e.g. the controller was down): start counting again
        if s.start <= since + 1e-6:
            return True
        later_start = s.start
    return False


def evaluate(rules: list[Rule], samples: dict[str, list[Sample]], now: float, interval: float) -> Verdict:
    breached: list[tuple[str, float]] = []
    inconclusive: list[str] = []
    latest: dict[str, float | None] = {}
    for i, rule in enumerate(rules):
        key = rule_key(i, rule)
        history = samples.get(key, [])
        value = history[-1].value if history else None
        latest[key] = value
        if value is None:
            inconclusive.append(key)
            continue
        if _held(rule, history, now, interval):
            breached.append((key, value))
    return Verdict(breached, inconclusive, latest)


def trim(samples: list[Sample], now: float, keep: float) -> list[Sample]:
    """Drop samples no rule can look back to, so the persisted state stays small."""
    return [s for s in samples if s.at >= now - keep]


def tick(st: RolloutState, spec: Spec, now: float, deadline: float | None, version: str,
         baseline: str | None) -> Analyze:
    """The next evaluation: one interval after the last, or at the deadline that closes the step. From the
    deadline on, every evaluation also measures the whole step, which decides whether the step passes."""
    interval = spec.analysis.interval
    base = st.last_tick if st.last_tick is not None and st.last_tick >= st.phase_started else st.phase_started
    at = min(base + interval, deadline) if deadline is not None and deadline > base else base + interval
    at = max(at, now)
    whole = max(at - st.phase_started, interval) if deadline is not None and at >= deadline else None
    return Analyze(at=at, window=interval, version=version, baseline=baseline, whole=whole)


def evidence(rule: Rule, value: float | None) -> float | None:
    """A measured value as evidence for ``rule``. A lower bound (``AtLeast``: requests still waiting for an answer)
    only counts where it decides: above a max it is a certain breach, at or above a min it certainly keeps that
    bound; anywhere else the true value may be either side of the bound, which is no data."""
    if not isinstance(value, AtLeast):
        return value
    if rule.max is not None:
        return float(value) if value > rule.max else None
    return float(value) if rule.min is not None and value >= rule.min else None


def record_samples(st: RolloutState, spec: Spec, obs: Observation) -> RolloutState:
    keep = max((r.for_ for r in spec.analysis.rules), default=0.0) + 3 * spec.analysis.interval
    samples = dict(st.samples)
    for i, rule in enumerate(spec.analysis.rules):
        key = rule_key(i, rule)
        sample = Sample(at=obs.at, start=obs.at - spec.analysis.interval, value=evidence(rule, obs.values.get(key)))
        samples[key] = trim([*samples.get(key, []), sample], obs.at, keep)
    return st.model_copy(update={"samples": samples, "last_tick": obs.at})


def span_text(seconds: float) -> str:
    """A measured span as people read it: 3.001s is 3s, 14m10.2s is 14m10s."""
    return format_duration(round(seconds) if seconds >= 10 else round(seconds, 1))


def window_mean(samples: list[Sample], since: float) -> float | None:
    """The mean of the evaluations that lie within [since, now]: a rule's value over its breach window."""
    seen = [s.value for s in samples if s.start >= since - 1e-6 and s.value is not None]
    return sum(seen) / len(seen) if seen else None


def missing_text(keys: list[str], reasons: dict[str, str], span: str) -> str:
    """Why the rules ``keys`` have no value: the controller's reasons (no traffic, a source that cannot measure
    the metric, an unreachable source) when it gave them, else the generic "no data ... (no traffic?)"."""
    names = [k.split(":", 1)[1] for k in keys]
    known = [reasons.get(k) for k in keys]
    if all(r is None for r in known):
        return f"no data for {', '.join(names)} {span} (no traffic?)"
    distinct = list(dict.fromkeys(known))
    if len(distinct) == 1:
        return str(distinct[0])
    return "; ".join(f"{n}: {r or 'no data (no traffic?)'}" for n, r in zip(names, known, strict=True))


STEP_PROMISE = "a step never advances without evidence"
WATCH_PROMISE = "the watch never passes without evidence"
BATCH_PROMISE = "a batch never passes without evidence"

Gate = Literal["pass", "wait", "fail"]


def gate(rules: list[Rule], obs: Observation, whole: float | None, *,
         promise: str = STEP_PROMISE) -> tuple[Gate, str]:
    """Does the step's own evidence let it pass? Every rule measured over the whole step must have data and be
    within its bound. A step whose errors came and went (never long enough to breach) still fails here."""
    if not rules:
        return "pass", ""
    span = span_text(whole or 0.0)
    if obs.whole is None:
        return "wait", f"waiting: the metrics over the step ({span}) could not be read; {promise}"
    missing = []
    for i, rule in enumerate(rules):
        key = rule_key(i, rule)
        value = evidence(rule, obs.whole.get(key))
        if value is None:
            missing.append(key)
        elif rule.broken_by(value):
            return "fail", f"{rule.metric} over the step ({span}) was {rule.show(value)} (rule: {rule.describe()})"
    if missing:
        return "wait", f"waiting: {missing_text(missing, obs.whole_missing, f'over the step ({span})')}; {promise}"
    return "pass", ""
