"""Helpers for engine tests in simulated time: specs with the seeds' defaults, metric shapes, what traffic did."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from releasegate.engine.simulate import Metric, Trace
from releasegate.spec.models import Spec

PROMOTED_AT = 3000.0
"""With the seed canary (5 % for 10m, 25 % for 10m, 50 % for 30m), when the new version reaches 100 %."""


T0 = 1_000_000.0
"""simulate()'s default start time: states hold absolute times, traces hold times since the start."""


def make_spec(**over: Any) -> Spec:
    data: dict[str, Any] = {"service": "shop", "platform": {"command": "app --port {port}", "instances": 2}}
    data.update(over)
    return Spec.model_validate(data)


def errors_when(pred: Callable[[float, int], object], rate: float = 0.30) -> Metric:
    """error_rate ``rate`` when ``pred(t, weight)`` holds, else 0; latency always fine."""
    return lambda t, m, w: (rate if pred(t, w) else 0.0) if m == "error_rate" else 0.05


def new_weights(trace: Trace, version: str = "2.0.0") -> list[int]:
    return [w.get(version, 0) for _, w in trace.weights]


def weight_times(trace: Trace) -> list[float]:
    return [t for t, _ in trace.weights]


def kinds(trace: Trace) -> list[str]:
    return [d.kind for _, d in trace.decisions]


def messages(trace: Trace, kind: str) -> list[str]:
    return [d.message for _, d in trace.decisions if d.kind == kind]
