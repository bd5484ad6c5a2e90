"""Threshold analysis: does a rule's condition hold for its whole ``for`` window, and is there evidence at all?

Each sample covers the interval [start, at]. A rule breaches only when an unbroken run of samples, all with data
and all beyond the bound, reaches back to ``now - for``. A missing value (no traffic, unreachable source) breaks
the run and makes the rule inconclusive: inconclusive never breaches and never lets a rollout advance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from releasegate.engine.state import Sample
from releasegate.spec.models import Rule


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
