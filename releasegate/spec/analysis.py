"""Analysis rules: which metric, which bound, held for how long. The seeds' defaults are error rate above 5 %
or p95 above 2.5 s for 5 minutes."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_serializer, field_validator, model_validator

from releasegate.durations import duration_text
from releasegate.spec.common import LATENCY_METRICS, Duration, Threshold, _duration
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError

PERCENT_METRICS = ("cpu", "memory_percent")
"""Metrics measured in percent: a bound is written 90 or 90%."""


_SIZES = {"k": 1 / 1024, "m": 1.0, "g": 1024.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg])(?:i?b)?\s*$", re.IGNORECASE)


def _number(metric: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number for {metric}, got {value!r}")
    return float(value)


def _percent(metric: str, value: object) -> float:
    """90 or '90%' -> 90.0: the number of percent."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                return _number(metric, float(text[:-1]))
            except ValueError:
                pass
        example = "5%" if metric == "error_rate" else "90 or 90%"
        raise ValueError(f"expected a percentage for {metric} such as {example}, got {value!r}")
    return _number(metric, value)


def _megabytes(value: object) -> float:
    """300, '300MB', '1.5GB', '512MiB' -> MB (2**20 bytes, as top and ps count)."""
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise ValueError(f"expected a size for memory_mb such as 300MB or 1.5GB (or a number of MB), "
                             f"got {value!r}")
        return float(m.group(1)) * _SIZES[m.group(2).lower()]
    return _number("memory_mb", value)


def _threshold(metric: str, value: object) -> float:
    """A bound in the metric's own unit. Latency: a duration (2.5s). error_rate: a fraction, 0.05 or '5%'.
    cpu: percent of one core, 90 or '90%' (above 100 for an instance that uses several cores). memory_percent:
    percent of the instance's memory limit, 0 to 100. memory_mb: MB, 300 or '300MB' / '1.5GB'. Others: numbers.
    Only a PromQL result may be negative."""
    if metric in LATENCY_METRICS:
        return _duration(value)
    if metric == "error_rate":
        number = _percent(metric, value)
        number = number / 100.0 if isinstance(value, str) else number
        if number > 1:
            raise ValueError(f"error_rate is a fraction of requests from 0 to 1: write 0.05 or 5%, got {value!r}")
    elif metric in PERCENT_METRICS:
        number = _percent(metric, value)
        if metric == "memory_percent" and number > 100:
            raise ValueError(f"memory_percent is a percentage of the instance's memory limit, at most 100, "
                             f"got {value!r}")
    elif metric == "memory_mb":
        number = _megabytes(value)
    else:
        number = _number(metric, value)
    if number < 0 and metric != "prometheus":
        raise ValueError(f"a bound on {metric} cannot be negative, got {value!r}")
    return number


class Rule(_Model):
    """Breaches when the metric stays beyond its bound for the whole `for` window."""

    metric: Literal["error_rate", "rps", "latency_p50", "latency_p95", "latency_p99", "cpu", "memory_mb",
                    "memory_percent", "prometheus"] = Field(
        description="What to watch, per version; prometheus runs `query`. cpu, memory_mb and memory_percent "
        "are per instance (with its child processes), averaged over the version's instances: cpu in percent of "
        "one core, memory_mb the resident memory (RSS) in MB, memory_percent that RSS in percent of the "
        "instance's memory limit (its cgroup's, e.g. a container's or systemd's MemoryMax, else the host's "
        "memory).")
    query: str | None = Field(None, description="PromQL for metric: prometheus; {{service}}, {{version}} and "
                              "{{baseline_version}} are substituted. An empty result is no data.")
    max: Threshold | None = Field(
        None, description="Upper bound in the metric's unit: latency as a duration (2s), error_rate as 0.05 or "
        "5%, cpu and memory_percent as 90 or 90%, memory_mb as 300 or 300MB / 1.5GB.")
    min: Threshold | None = Field(None, description="Lower bound, written like max.")
    for_: Duration = Field(300.0, alias="for", description="How long the bound must be broken to breach.")

    @field_validator("max", "min", mode="before")
    @classmethod
    def _threshold(cls, value: object, info: ValidationInfo) -> object:
        metric = info.data.get("metric")
        if value is None:
            return value
        if metric is None:  # the metric is invalid and already reported: do not pile a second error on it
            for kind in ("error_rate", "latency_p95", "cpu", "memory_mb"):
                try:
                    return _threshold(kind, value)
                except ValueError:
                    pass
            return value
        return _threshold(str(metric), value)

    @model_validator(mode="after")
    def _bounded(self) -> Rule:
        if self.max is None and self.min is None:
            raise ValueError(f"the rule on {self.metric} needs a bound: max or min")
        if self.max is not None and self.min is not None and self.min >= self.max:
            raise LocatedValueError(
                f"min {self.show(self.min, exact=True)} is not below max {self.show(self.max, exact=True)}: no "
                f"value could pass; the rule breaks when {self.metric} goes above max or below min, so write min "
                "lower than max, or keep only one of them", at=("min",))
        if (self.metric == "prometheus") != (self.query is not None):
            raise ValueError("metric: prometheus needs a query (PromQL), and only it takes one"
                             if self.metric == "prometheus" else f"query is only for metric: prometheus, "
                             f"not {self.metric}")
        return self

    @field_serializer("max", "min", when_used="json")
    def _threshold_text(self, value: float | None) -> float | str | None:
        """Latency bounds are stored as durations, as written, so a stored spec validates again."""
        return duration_text(value) if value is not None and self.metric in LATENCY_METRICS else value

    def broken_by(self, value: float) -> bool:
        return (self.max is not None and value > self.max) or (self.min is not None and value < self.min)

    def show(self, value: float, *, exact: bool = False) -> str:
        """A value of this rule's metric with its unit, as people write it: 2.5s, 245ms, 5%, 90%, 300MB.
        Measured values are rounded to 3 significant digits; ``exact`` (the bounds as written) is not."""
        return show_value(self.metric, value, exact=exact)

    def describe(self) -> str:
        from releasegate.durations import format_duration

        bounds = []
        if self.max is not None:
            bounds.append(f"> {self.show(self.max, exact=True)}")
        if self.min is not None:
            bounds.append(f"< {self.show(self.min, exact=True)}")
        return f"{self.metric} {' or '.join(bounds)} for {format_duration(self.for_)}"


def _significant(value: float, digits: int) -> str:
    """``value`` to ``digits`` significant digits, never in exponent notation: 337.5 -> 338, 0.2019 -> 0.202,
    1536.4 -> 1536."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def show_value(metric: str, value: float, *, exact: bool = False) -> str:
    """A value of ``metric`` with its unit: latency as a duration (245ms, 1.45s), error_rate in percent (30.2%),
    cpu and memory_percent in percent, memory_mb in MB, others as numbers. Measured values get 3 significant
    digits (a PromQL result 4); ``exact`` keeps every digit, for bounds as the user wrote them."""
    from releasegate.durations import format_duration

    def number(v: float, digits: int = 3) -> str:
        return f"{v:g}" if exact else _significant(v, digits)

    if metric in LATENCY_METRICS:
        if exact:
            return format_duration(value)
        return f"{number(value * 1000)}ms" if abs(value) < 1 else f"{number(value)}s"
    if metric == "error_rate":
        return f"{number(value * 100)}%"
    if metric in PERCENT_METRICS:
        return f"{number(value)}%"
    if metric == "memory_mb":
        return f"{number(value)}MB"
    return number(value, 4 if metric == "prometheus" else 3)


def _seed_rules() -> list[Rule]:
    return [Rule.model_validate({"metric": "error_rate", "max": 0.05, "for": "5m"}),
            Rule.model_validate({"metric": "latency_p95", "max": "2.5s", "for": "5m"})]


class Analysis(_Model):
    """Rules evaluated against the new version's metrics while it takes traffic; a breach rolls back."""

    interval: Duration = Field(10.0, gt=0, description="How often rules are evaluated.")
    post_promotion: Duration = Field(1800.0, description="Keep evaluating at 100 % this long while the previous "
                                     "version is kept (the seeds' 30-minute watch).")
    rules: list[Rule] = Field(default_factory=_seed_rules, description="Any rule breached rolls the release "
                              "back; the defaults are the seeds' error-rate and p95 latency limits.")
    no_data_timeout: Duration | None = Field(
        None, description="How long a step, batch or watch may go without data for a rule (no traffic, a "
        "source that cannot measure it) before the rollout pauses for an operator; counted from the start of the "
        "first evaluation window without data, reset by one with data. Default: the step's pause (the watch: "
        "post_promotion; rolling: its pause), at least 3 analysis intervals; a step without a pause waits for "
        "promote anyway.")
    baseline: bool = Field(
        False, description="Canary only: start, with the canary, a baseline of the previous version (its artifact, "
        "the canary's instance count) routed as its own entry `<previous>+baseline` with the canary's weight at "
        "every step, taken from the previous version's share (capped at what is left of it above 50 %); "
        "health-checked before traffic, removed when the rollout ends, whatever the outcome. Not on ssh "
        "platforms yet (docs/guide.md).")

    @field_validator("no_data_timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("no_data_timeout must be longer than 0, e.g. 10m (leave it out for the step's pause)")
        return v
