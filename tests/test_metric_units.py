"""Rule bounds in the units runbooks write them: "CPU > 90%", "memory_usage > 300MB", "메모리 사용률 > 95%"."""

from __future__ import annotations

import pytest

from releasegate.spec import SpecError, load_spec_text
from releasegate.spec.models import Rule, Spec

HEAD = 'service: shop\nplatform: {command: "app --port {port}"}\nanalysis:\n  rules:\n'


def rule(text: str) -> Rule:
    [only] = load_spec_text(HEAD + f"    - {text}\n", "spec.yaml").analysis.rules
    return only


def error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        load_spec_text(HEAD + f"    - {text}\n", "spec.yaml")
    [issue] = str(info.value).splitlines()
    return issue


@pytest.mark.parametrize(("text", "bound", "described"), [
    ("{metric: cpu, max: 90%, for: 5m}", 90.0, "cpu > 90% for 5m"),
    ("{metric: cpu, max: 90, for: 5m}", 90.0, "cpu > 90% for 5m"),
    ("{metric: cpu, max: 180%, for: 5m}", 180.0, "cpu > 180% for 5m"),  # an instance on two cores
    ("{metric: memory_percent, max: 95%, for: 3m}", 95.0, "memory_percent > 95% for 3m"),
    ("{metric: memory_percent, max: 80, for: 3m}", 80.0, "memory_percent > 80% for 3m"),
    ("{metric: memory_mb, max: 300MB, for: 5m}", 300.0, "memory_mb > 300MB for 5m"),
    ("{metric: memory_mb, max: 300, for: 5m}", 300.0, "memory_mb > 300MB for 5m"),
    ("{metric: memory_mb, max: 1.5GB, for: 5m}", 1536.0, "memory_mb > 1536MB for 5m"),
    ("{metric: memory_mb, max: 512 MiB, for: 5m}", 512.0, "memory_mb > 512MB for 5m"),
    ("{metric: error_rate, max: 5%, for: 5m}", 0.05, "error_rate > 5% for 5m"),
])
def test_bounds_in_the_runbooks_units(text: str, bound: float, described: str) -> None:
    r = rule(text)
    assert r.max == pytest.approx(bound) and r.describe() == described


def test_a_stored_spec_with_unit_bounds_validates_again() -> None:
    spec = load_spec_text(HEAD + "    - {metric: memory_mb, max: 1.5GB, for: 5m}\n"
                                 "    - {metric: cpu, max: 90%, for: 5m}\n", "spec.yaml")
    assert Spec.model_validate_json(spec.model_dump_json(by_alias=True)) == spec


@pytest.mark.parametrize(("text", "message"), [
    ("{metric: cpu, max: -5}", "spec.yaml:5:26: a bound on cpu cannot be negative, got -5"),
    ("{metric: cpu, max: 'ninety%'}",
     "spec.yaml:5:26: expected a percentage for cpu such as 90 or 90%, got 'ninety%'"),
    ("{metric: cpu, max: 2.5s}", "spec.yaml:5:26: expected a percentage for cpu such as 90 or 90%, got '2.5s'"),
    ("{metric: memory_percent, max: 150}",
     "spec.yaml:5:37: memory_percent is a percentage of the instance's memory limit, at most 100, got 150"),
    ("{metric: memory_percent, max: 101%}",
     "spec.yaml:5:37: memory_percent is a percentage of the instance's memory limit, at most 100, got '101%'"),
    ("{metric: memory_percent, min: -1%}", "spec.yaml:5:37: a bound on memory_percent cannot be negative, got '-1%'"),
    ("{metric: memory_mb, max: 300 apples}",
     "spec.yaml:5:32: expected a size for memory_mb such as 300MB or 1.5GB (or a number of MB), got '300 apples'"),
    ("{metric: memory_mb, max: -300}", "spec.yaml:5:32: a bound on memory_mb cannot be negative, got -300"),
    ("{metric: error_rate, max: 5}",
     "spec.yaml:5:33: error_rate is a fraction of requests from 0 to 1: write 0.05 or 5%, got 5"),
])
def test_nonsense_bounds_are_refused_where_they_are_written(text: str, message: str) -> None:
    assert error(text) == message


def test_a_promql_bound_may_be_negative() -> None:
    spec = load_spec_text(HEAD + "    - {metric: prometheus, query: 'delta(x[5m])', min: -3}\n"
                          "metrics: {prometheus: {url: 'http://127.0.0.1:9090'}}\n", "spec.yaml")
    assert spec.analysis.rules[0].min == -3.0
