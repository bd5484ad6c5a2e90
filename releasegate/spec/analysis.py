"""Analysis rules: which metric, which bound, held for how long. The seeds' defaults are error rate above 5 %
or p95 above 2.5 s for 5 minutes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_serializer, field_validator, model_validator

from releasegate.durations import duration_text
from releasegate.spec.common import LATENCY_METRICS, Duration, Threshold, _duration
from releasegate.spec.common import SpecModel as _Model


def _threshold(metric: str, value: object) -> float:
    """Latency thresholds are durations (2.5s); error_rate takes 0.05 or '5%'; the rest plain numbers."""
    if metric in LATENCY_METRICS:
        return _duration(value)
    if isinstance(value, str) and value.strip().endswith("%") and metric == "error_rate":
        return float(value.strip()[:-1]) / 100.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number for {metric}, got {value!r}")
    return float(value)


class Rule(_Model):
    """Breaches when the metric stays beyond its bound for the whole `for` window."""

    metric: Literal["error_rate", "rps", "latency_p50", "latency_p95", "latency_p99", "cpu", "memory_mb",
                    "prometheus"] = Field(description="What to watch, per version; prometheus runs `query`.")
    query: str | None = Field(None, description="PromQL for metric: prometheus; {{service}}, {{version}} and "
                              "{{baseline_version}} are substituted. An empty result is no data.")
    max: Threshold | None = Field(
        None, description="Upper bound (latency as a duration, error_rate as 0.05 or 5%).")
    min: Threshold | None = Field(None, description="Lower bound, written like max.")
    for_: Duration = Field(300.0, alias="for", description="How long the bound must be broken to breach.")

    @field_validator("max", "min", mode="before")
    @classmethod
    def _threshold(cls, value: object, info: ValidationInfo) -> object:
        metric = info.data.get("metric")
        if value is None:
            return value
        if metric is None:  # the metric is invalid and already reported: do not pile a second error on it
            for kind in ("error_rate", "latency_p95"):
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

    def describe(self) -> str:
        from releasegate.durations import format_duration

        def show(v: float) -> str:
            return format_duration(v) if self.metric in LATENCY_METRICS else f"{v:g}"

        bounds = []
        if self.max is not None:
            bounds.append(f"> {show(self.max)}")
        if self.min is not None:
            bounds.append(f"< {show(self.min)}")
        return f"{self.metric} {' or '.join(bounds)} for {format_duration(self.for_)}"


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
        "post_promotion; rolling: its pause); a step without a pause waits for promote anyway.")

    @field_validator("no_data_timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("no_data_timeout must be longer than 0, e.g. 10m (leave it out for the step's pause)")
        return v
