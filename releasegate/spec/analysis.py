"""Analysis rules: which metric, which bound, held for how long. The seeds' defaults are error rate above 5 %
or p95 above 2.5 s for 5 minutes."""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, WithJsonSchema, field_serializer, field_validator, model_validator

from releasegate.durations import duration_text
from releasegate.spec.common import LATENCY_METRICS, Duration, Threshold, _duration
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError
from releasegate.spec.judge_counts import JudgeCounts
from releasegate.spec.rollback import PERCENT_JSON_SCHEMA

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


def _margin(metric: str, value: object) -> float:
    """A judge margin: error_rate absolute (0.005 or '0.5%', a difference of error rates); latency and prometheus
    relative (0.1 or '10%'). A plain number above 1 is refused for relative margins: 10 could mean 10 % or 1000 %."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a margin such as {'0.5%' if metric == 'error_rate' else '10%'}, got {value!r}")
    try:
        number = _percent(metric, value)
    except ValueError:
        raise ValueError(f"expected a margin such as {'0.5%' if metric == 'error_rate' else '10%'}, "
                         f"got {value!r}") from None
    number = number / 100.0 if isinstance(value, str) else number
    if number < 0:
        raise ValueError(f"max_increase is how much worse the canary may be, 0 or more, got {value!r}")
    if metric == "error_rate" and number >= 1:
        raise ValueError(f"max_increase for error_rate is a difference of error rates below 1: write 0.005 or "
                         f"0.5% (half a percentage point), got {value!r}")
    if metric == "prometheus" and number >= 1:
        raise ValueError(f"max_increase for prometheus is a relative change below 100%, e.g. 5%, got {value!r}")
    if metric == "latency" and not isinstance(value, str) and number > 1:
        raise ValueError(f"max_increase for latency is relative: write 10% (or 0.1), got {value!r}")
    return number


class JudgeMetric(_Model):
    """One metric the judge compares between canary and baseline (docs/judge.md)."""

    metric: Literal["error_rate", "latency", "prometheus"] = Field(
        description="error_rate: 5xx share of requests; latency: the router's latency histograms; prometheus: "
        "`query`, run once per version.")
    max_increase: Annotated[float, WithJsonSchema(PERCENT_JSON_SCHEMA)] = Field(
        description="The margin: how much worse the canary may be without being a regression. error_rate: "
        "absolute, a difference of error rates (0.005 or 0.5% = half a percentage point); latency and "
        "prometheus: relative (10% or 0.1).")
    query: str | None = Field(None, description="PromQL for metric: prometheus; {{service}} and {{version}} "
                              "are substituted for the canary and for the baseline.")
    direction: Literal["increase", "decrease"] = Field(
        "increase", description="prometheus only: whether a higher (increase) or lower (decrease) value is worse.")

    @field_validator("max_increase", mode="before")
    @classmethod
    def _margin(cls, value: object, info: ValidationInfo) -> object:
        return _margin(str(info.data.get("metric", "latency")), value)

    @model_validator(mode="after")
    def _consistent(self) -> JudgeMetric:
        if (self.metric == "prometheus") != (self.query is not None):
            raise LocatedValueError("metric: prometheus needs a query (PromQL), and only it takes one"
                                    if self.metric == "prometheus" else f"query is only for metric: prometheus, "
                                    f"not {self.metric}; remove it", at=("query",) if self.query else ())
        if self.direction != "increase" and self.metric != "prometheus":
            raise LocatedValueError(f"direction is only for metric: prometheus ({self.metric} is worse when it "
                                    "increases); remove it", at=("direction",))
        return self


def _judge_defaults() -> list[JudgeMetric]:
    return [JudgeMetric.model_validate({"metric": "error_rate", "max_increase": 0.005}),
            JudgeMetric.model_validate({"metric": "latency", "max_increase": "10%"})]


class Judge(_Model):
    """The sequential judge: canary against baseline with anytime-valid tests (docs/judge.md): at every analysis
    interval of a canary step; a regression rolls back, a step closes only when the judge passes it."""

    alpha: float = Field(0.01, gt=0, le=0.2, description="Bound on the probability of a false rollback over the "
                         "whole rollout (split across the metrics), and of a step passing with a regression larger "
                         "than a margin.")
    min_block: int = Field(1, ge=1, description="Requests both versions need before their counts make one "
                           "observation (intervals are pooled until then).")
    max_extension: Duration = Field(1800.0, description="How long a step may be extended past its pause while "
                                    "the judge cannot yet rule out a regression larger than the margin.")
    metrics: list[JudgeMetric] = Field(default_factory=_judge_defaults, min_length=1, description="What to "
                                       "compare; default: error_rate 0.5 points and latency 10 %.")
    counts: JudgeCounts | None = Field(None, description="Where the judge's request, error and latency counts "
                                       "come from: Prometheus counters (needs metrics.prometheus); default: the "
                                       "router's running totals.")

    @field_validator("max_extension")
    @classmethod
    def _extension(cls, v: float) -> float:
        if v < 0:
            raise ValueError("max_extension cannot be negative; 0 means no extension, e.g. 30m")
        return v

    @field_validator("metrics")
    @classmethod
    def _unique(cls, metrics: list[JudgeMetric]) -> list[JudgeMetric]:
        seen: set[tuple[str, str | None]] = set()
        for i, m in enumerate(metrics):
            key = (m.metric, m.query)
            if key in seen:
                raise LocatedValueError(f"{m.metric} is listed twice{' with the same query' if m.query else ''}: "
                                        "keep one entry per metric (each costs a share of alpha)", at=(i,))
            seen.add(key)
        return metrics

    @model_validator(mode="after")
    def _latency_counted(self) -> Judge:
        """Counts from Prometheus without a histogram query leave a judged latency without data: a step could never
        pass, so it is refused here rather than found out during a rollout."""
        if self.counts is None or self.counts.latency is not None:
            return self
        for i, m in enumerate(self.metrics):
            if m.metric == "latency":
                written = "metrics" in self.model_fields_set
                raise LocatedValueError(
                    f"{'' if written else 'the default '}judge metric latency needs counts.latency (the version's "
                    "histogram buckets, e.g. sum by (le) (http_request_duration_seconds_bucket{version="
                    "\"{{version}}\"})), or list analysis.judge.metrics without latency",
                    at=("metrics", i, "metric") if written else ("counts",))
        return self


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
        "health-checked before traffic, removed when the rollout ends, whatever the outcome. On an ssh fleet: "
        "the canary's count at its largest step, on hosts without the canary first (docs/ssh.md).")
    judge: Judge | None = Field(None, description="Compare the canary with its baseline (or, without one, the "
                                "previous version) using the sequential judge (docs/judge.md): a regression beyond "
                                "a margin rolls back straight to 0 %; a step closes only once the judge rules one "
                                "out, extended up to max_extension, then paused for an operator. `judge: true` "
                                "is the defaults (`judge: {}`).")

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_switch(cls, v: object) -> object:
        # `judge: true` reads like `baseline: true`, so it means the defaults; `false` is no judge.
        if isinstance(v, bool):
            return {} if v else None
        return v

    @field_validator("no_data_timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("no_data_timeout must be longer than 0, e.g. 10m (leave it out for the step's pause)")
        return v
